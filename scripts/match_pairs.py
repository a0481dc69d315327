"""Rule match_pairs: MIRorR's match_pairs.txt of one method on one scene, from pairs.txt and scores.csv."""
from vop.protocols.tables import write_match_pairs
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
write_match_pairs(snakemake.input.pairs, snakemake.input.scores, snakemake.input.gt, snakemake.output[0])
