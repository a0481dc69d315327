"""Rule auc_table: results/{dataset}/auc.csv from every method's poses and pairs (or, for a dataset
without ground truth, the queries each method retrieved for, every metric cell saying so)."""
from vop.conf import MetricsConf
from vop.metrics import run_entries, summarize, summarize_without_ground_truth
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
if snakemake.params.has_ground_truth:
    entries = run_entries(snakemake.params.runs, snakemake.input.pose, snakemake.input.pairs, snakemake.input.gt)
    summarize(entries, snakemake.output[0], tau=MetricsConf.from_dict(snakemake.params.conf, "metrics").overlap_tau)
else:
    entries = [{**run, "pairs_txt": pairs} for run, pairs in zip(snakemake.params.runs, snakemake.input.pairs)]
    summarize_without_ground_truth(entries, snakemake.output[0])
