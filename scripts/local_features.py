"""Rule local_features: SIFT on every image of a scene, once, for all methods."""
from vop import io
from vop.conf import LocalFeaturesConf
from vop.local_features import extract_local_features
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
extract_local_features(snakemake.params.image_dir, io.read_names(snakemake.input.gt), snakemake.output[0],
                       LocalFeaturesConf.from_dict(snakemake.params.conf, "local_features"),
                       num_workers=snakemake.threads)
