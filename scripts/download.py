"""Rule download_eth3d: fetch the dataset archive."""
from vop.datasets import eth3d
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
eth3d.download(snakemake.params.url, snakemake.output[0])
