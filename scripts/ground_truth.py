"""Rule ground_truth: gt.h5 (K, T_w2cam, image sizes, overlap) of one scene, from its native files."""
from vop.datasets import open_scene
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
open_scene(**snakemake.params.reader).write_ground_truth(snakemake.output[0])
