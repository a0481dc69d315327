"""Rule protocol_plot: the figure of a protocol table (R@N curves, mAP bars) for the report."""
from vop.protocols.plots import plot_protocol
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
entries = [{**run, "pairs_txt": pairs, "gt_h5": gt}
           for run, pairs, gt in zip(snakemake.params.runs, snakemake.input.pairs, snakemake.input.gt, strict=True)]
plot_protocol(snakemake.wildcards.protocol, entries, snakemake.input.table, snakemake.output[0],
              title=f"Dataset {snakemake.wildcards.dataset}")
