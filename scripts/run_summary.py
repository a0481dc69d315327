"""Rule run_summary: jobs, wall seconds and peak memory per stage of a dataset's run, for the report."""
import logging

from vop.summary import run_summary, write_summary
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
summary = run_summary(snakemake.params.results, "logs")
write_summary(summary, snakemake.output.tsv, snakemake.output.html,
              title=f"Run summary of dataset {snakemake.wildcards.dataset}")
logging.getLogger("vop.summary").info("%s\n%s", snakemake.output.tsv, summary.text())
