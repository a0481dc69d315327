"""Rule train_encoder: the VOP patch-embedding head from labelled training scenes."""
import torch

from vop.conf import TrainConf
from vop.training import train_encoder
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_encoder(
    list(zip(snakemake.input.features, snakemake.input.labels)),
    snakemake.output.checkpoint,
    backbone=snakemake.params.backbone,
    conf=TrainConf.from_dict(snakemake.params.train, f"encoders.{snakemake.wildcards.encoder}.train"),
    log_csv=snakemake.output.history,
    plot_png=snakemake.output.plot,
)
