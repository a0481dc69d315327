"""Rule features: backbone CLS and patch tokens of every image of a scene (its reader's image list)."""
import torch

from vop import io
from vop.backbones import load_backbone
from vop.conf import BackboneConf
from vop.datasets import open_scene
from vop.features import dump_features
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
conf = BackboneConf.from_dict(snakemake.params.conf, f"backbones.{snakemake.wildcards.backbone}")
backbone = load_backbone(snakemake.wildcards.backbone, weights=conf.weights)
scene = open_scene(**snakemake.params.reader)
# the ground truth's names (checked where they entered) and views (revisitop's query crops)
dump_features(scene.image_dir, io.read_names(snakemake.input.gt), backbone, snakemake.output[0],
              batch_size=conf.batch_size, num_workers=snakemake.threads, with_flipped=snakemake.params.with_flipped,
              views=io.read_views(snakemake.input.gt))
