"""Rule place_part: put one downloaded file where its reader expects it: a file that is not an archive
(a ground-truth pickle, an image list) copied, an archive unpacked by basename into one folder."""
from pathlib import Path

from vop.download import archive_kind, extract, install_file
from vop.io import atomic_path
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
if archive_kind(snakemake.input[0]) is None:
    install_file(snakemake.input[0], snakemake.params.target)
else:
    extract(snakemake.input[0], snakemake.params.target, member_prefix=snakemake.params.member_prefix,
            flatten=True)
with atomic_path(snakemake.output[0]) as tmp:
    Path(tmp).write_text(f"{snakemake.input[0]} -> {snakemake.params.target}\n")
