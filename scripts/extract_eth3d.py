"""Rule extract_eth3d_scene: unpack one scene of the ETH3D archive."""
from vop.datasets import eth3d
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
eth3d.extract_zip(
    snakemake.input[0], snakemake.params.target, overwrite=True, member_prefix=snakemake.params.member_prefix
)
