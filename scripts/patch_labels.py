"""Rule patch_labels: ground-truth patch correspondences of sampled pairs of one scene."""
from vop.datasets import open_scene
from vop.labels import scene_labels
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
conf = snakemake.params.conf
scene_labels(
    open_scene(**snakemake.params.reader),  # depth maps and poses of any source with depth
    snakemake.input.gt,
    snakemake.output[0],
    pairs_per_bin=conf.get("pairs_per_bin", 40),
    num_negative=conf.get("num_negative", 40),
    seed=conf.get("seed", 0),
    stride=conf.get("stride", 2),
)
