"""Rule sfm_table: sfm.csv, sfm_sweep.csv and the figure of registered images vs pairs per image (vop.sfm)."""
from vop.sfm import plot_sweep, sfm_table, sweep_table
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
sfm_table([{**run, "metrics": path} for run, path in zip(snakemake.params.runs, snakemake.input.metrics, strict=True)],
          snakemake.output.table)
sweep_table([{**run, "sweep": path} for run, path in zip(snakemake.params.sweep_runs, snakemake.input.sweep,
                                                           strict=True)], snakemake.output.sweep)
plot_sweep(snakemake.output.sweep, snakemake.output.table, snakemake.output.plot,
           title=f"{snakemake.wildcards.dataset}: registered images vs pairs per image")
