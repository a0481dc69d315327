"""Rule patch_labels: ground-truth patch correspondences of sampled pairs of one scene."""
from vop.conf import LabelsConf
from vop.datasets import open_scene
from vop.labels import scene_labels
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
scene_labels(open_scene(**snakemake.params.reader), snakemake.input.gt, snakemake.output[0],
             LabelsConf.from_dict(snakemake.params.conf, "labels"))
