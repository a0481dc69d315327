"""Rule embeddings: apply an encoder to the backbone features."""
from vop.encoder import apply_encoder
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
encoder = dict(snakemake.params.encoder)
if snakemake.input.get("checkpoint"):
    encoder["checkpoint"] = snakemake.input.checkpoint  # trained here, or the configured file
apply_encoder(snakemake.input.features, snakemake.output[0], encoder)
