"""Rule embeddings: apply an encoder to the backbone features."""
from vop.conf import EncoderConf
from vop.encoder import apply_encoder
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
apply_encoder(snakemake.input.features, snakemake.output[0],
              EncoderConf.from_dict(snakemake.params.encoder, f"encoders.{snakemake.wildcards.encoder}"),
              checkpoint=snakemake.input.get("checkpoint"))  # trained here, or the configured file
