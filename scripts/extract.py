"""Rule extract_part: unpack the members of an archive under one prefix (a scene, a part), safely."""
from pathlib import Path

from vop.download import extract
from vop.io import atomic_path
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
extract(snakemake.input[0], snakemake.params.target, member_prefix=snakemake.params.member_prefix, overwrite=True)
# what an archive holds is not known file by file in advance: a stamp says the part is complete
with atomic_path(snakemake.output[0]) as tmp:
    Path(tmp).write_text(f"{snakemake.input[0]}: {snakemake.params.member_prefix}\n")
