"""Rule auc_table: results/{dataset}/auc.csv from every method's poses and pairs."""
from vop.metrics import run_entries, summarize
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
entries = run_entries(snakemake.params.runs, snakemake.input.pose, snakemake.input.pairs, snakemake.input.gt)
summarize(entries, snakemake.output[0], tau=snakemake.params.overlap_tau)
