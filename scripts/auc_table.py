"""Rule auc_table: results/{dataset}/auc.csv from every method's poses and pairs."""
from vop.metrics import summarize
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
entries = [
    {**run, "pose_csv": pose, "pairs_txt": pairs, "gt_h5": gt}
    for run, pose, pairs, gt in zip(
        snakemake.params.runs, snakemake.input.pose, snakemake.input.pairs, snakemake.input.gt
    )
]
summarize(entries, snakemake.output[0], tau=snakemake.params.overlap_tau)
