"""Rule generate_scene: render one synthetic scene into its folder; the stamp says it is complete."""
from pathlib import Path

from vop.datasets import open_scene
from vop.io import atomic_path
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
scene = open_scene(**snakemake.params.reader).generate()
with atomic_path(snakemake.output[0]) as tmp:
    Path(tmp).write_text(f"{scene.path}: {len(scene.names)} images\n")
