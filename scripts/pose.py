"""Rule pose: relative pose of every retrieved pair, scored against ground truth."""
from vop import io
from vop.pose import DEFAULT_THRESHOLDS_PX, estimate_poses
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
conf = snakemake.params.conf
estimate_poses(
    io.read_pairs(snakemake.input.pairs),
    io.read_gt(snakemake.input.gt),
    snakemake.input.local_features,
    snakemake.output[0],
    thresholds_px=conf.get("threshold_px", DEFAULT_THRESHOLDS_PX),
    ratio=conf.get("ratio", 0.8),
    estimator=conf.get("estimator", "opencv"),
    num_workers=snakemake.threads,
)
