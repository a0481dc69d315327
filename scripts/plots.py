"""Rule plots: pose-error curves, recall@k curves and the retrieval grid of a dataset."""
from vop.conf import MetricsConf
from vop.metrics import run_entries
from vop.plots import make_plots
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
entries = run_entries(snakemake.params.runs, snakemake.input.pose, snakemake.input.pairs, snakemake.input.gt)
make_plots(entries, snakemake.output.pose_errors, snakemake.output.recall, snakemake.output.retrievals,
           tau=MetricsConf.from_dict(snakemake.params.conf, "metrics").overlap_tau, auc_csv=snakemake.input.auc,
           summary_html=snakemake.output.summary, title=f"Dataset {snakemake.wildcards.dataset}")
