from vop.datasets import main

main()
