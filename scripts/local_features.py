"""Rule local_features: SIFT on every image of a scene, once, for all methods."""
from vop import io
from vop.pose import extract_local_features
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
conf = snakemake.params.conf
extract_local_features(
    snakemake.params.image_dir,
    io.read_names(snakemake.input.gt),
    snakemake.output[0],
    max_keypoints=conf.get("max_keypoints", 4096),
    resize_max=conf.get("resize_max", 1600),
    root_sift=conf.get("root_sift", True),
    num_workers=snakemake.threads,
    extractor=conf.get("extractor", "opencv"),
)
