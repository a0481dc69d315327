"""Rule embeddings: apply an encoder to the backbone features."""
from vop.encoder import apply_encoder
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
apply_encoder(snakemake.input[0], snakemake.output[0], snakemake.params.encoder)
