"""Rule nso_plots: predicted against true NSO per method, and pairs rescaled by their predicted scale."""
from vop.nso_plots import plot_nso_scatter, plot_rescaled_pairs
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
runs = [{**run, "overlap_csv": path} for run, path in zip(snakemake.params.runs, snakemake.input)]
plot_nso_scatter(runs, snakemake.output.scatter, f"Enclosure and concentration, {snakemake.wildcards.dataset}")
plot_rescaled_pairs(runs, snakemake.output.pairs)
