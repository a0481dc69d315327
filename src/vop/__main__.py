"""`python -m vop <stage> ...`, the same as the installed `vop` command."""

import sys

from vop.cli import main

if __name__ == "__main__":
    sys.exit(main())
