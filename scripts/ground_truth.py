"""Rule ground_truth: gt.h5 (K, T_w2cam, image sizes, overlap) of one scene."""
from pathlib import Path

from vop.datasets import eth3d
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
scene_dir = Path(snakemake.params.scene_dir)
eth3d.write_ground_truth(scene_dir.parent, scene_dir.name, snakemake.output[0])
