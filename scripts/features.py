"""Rules features and features_shard: backbone CLS and patch tokens of every image of a scene (or of one
image shard), or, for a sharded scene, the features file that links its shards' groups."""
import torch

from vop import io
from vop.backbones import load_backbone
from vop.conf import BackboneConf
from vop.datasets import open_scene
from vop.features import dump_features
from vop.shards import link_features, read_plan
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
if "shards" in snakemake.input.keys():
    link_features(snakemake.input.shards, snakemake.output[0])
else:
    torch.set_num_threads(snakemake.threads)
    conf = BackboneConf.from_dict(snakemake.params.conf, f"backbones.{snakemake.wildcards.backbone}")
    backbone = load_backbone(snakemake.wildcards.backbone, weights=conf.weights)
    scene = open_scene(**snakemake.params.reader)
    # the ground truth's names (checked where they entered) and views (revisitop's query crops)
    names = io.read_names(snakemake.input.gt)
    if "shard" in snakemake.wildcards.keys():
        start, stop = read_plan(snakemake.input.plan)["images"][int(snakemake.wildcards.shard)]
        names = names[start:stop]
    dump_features(scene.image_dir, names, backbone, snakemake.output[0], batch_size=conf.batch_size,
                  num_workers=snakemake.threads, with_flipped=snakemake.params.with_flipped,
                  views=io.read_views(snakemake.input.gt))
