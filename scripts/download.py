"""Rules download_*: fetch one dataset archive (resumable, verified), or say where to put it by hand."""
from vop.download import download
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
download(snakemake.params.url, snakemake.output[0], config_key=snakemake.params.config_key)
