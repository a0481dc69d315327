"""Rule protocol_table: results/{dataset}/{protocol}.csv (vpr, revisitop or gl3d) from every run's retrieval."""
from vop.protocols.tables import write_table
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
match_pairs = snakemake.input.get("match_pairs", [None] * len(snakemake.input.gt))  # gl3d only
files = [snakemake.input.pairs, snakemake.input.gt, match_pairs]
entries = [{**run, "pairs_txt": pairs, "gt_h5": gt, "match_pairs": match}
           for run, pairs, gt, match in zip(snakemake.params.runs, *files, strict=True)]
write_table(snakemake.wildcards.protocol, entries, snakemake.output[0])
