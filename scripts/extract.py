"""Rules extract_*: unpack the members of an archive under one prefix (one scene, one part), safely."""
from pathlib import Path

from vop.download import extract
from vop.io import atomic_path
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
extract(snakemake.input[0], snakemake.params.target, member_prefix=snakemake.params.member_prefix, overwrite=True)
stamp = snakemake.params.get("stamp")
if stamp:  # archives whose content is not known file by file in advance end with a completion stamp
    with atomic_path(stamp) as tmp:
        Path(tmp).write_text(f"{snakemake.input[0]}: {snakemake.params.member_prefix}\n")
