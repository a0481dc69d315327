"""Rule local_features: SIFT on every image of a scene (its reader's image list), once, for all methods."""
from vop.conf import LocalFeaturesConf
from vop.datasets import open_scene
from vop.local_features import extract_local_features
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
scene = open_scene(**snakemake.params.reader)
extract_local_features(scene.image_dir, scene.checked_image_names(), snakemake.output[0],
                       LocalFeaturesConf.from_dict(snakemake.params.conf, "local_features"),
                       num_workers=snakemake.threads)
