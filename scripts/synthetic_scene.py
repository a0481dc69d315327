"""Rule synthetic_scene: render one synthetic scene in the ETH3D layout."""
import zlib

from vop.datasets import synthetic
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
conf = dict(snakemake.params.synthetic)
textures = synthetic.TRAIN_TEXTURES if conf.get("textures", "eval") == "train" else synthetic.EVAL_TEXTURES
# A scene's seed depends on the dataset seed and the scene's name, not on its position in the list.
seed = zlib.crc32(f"{conf.get('seed', 0)}/{snakemake.wildcards.scene}".encode())
synthetic.generate_scene(
    snakemake.params.scene_dir,
    seed=seed,
    num_images=conf.get("num_images", 24),
    width=conf.get("width", 640),
    height=conf.get("height", 480),
    textures=textures,
    overwrite=True,  # Snakemake created the output folders before the job
)
