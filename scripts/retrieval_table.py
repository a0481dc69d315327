"""Rule retrieval_table: auc.csv of a dataset without ground truth (retrieval ran, pose metrics cannot)."""
from vop.metrics import summarize_without_ground_truth
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
entries = [{**run, "pairs_txt": pairs} for run, pairs in zip(snakemake.params.runs, snakemake.input.pairs)]
summarize_without_ground_truth(entries, snakemake.output[0])
