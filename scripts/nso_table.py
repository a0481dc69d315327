"""Rule nso_table: results/{dataset}/nso.csv, the box-embeddings protocol (RMSE, L1, Acc) per method and
scene, and ALL."""
from vop.nso import nso_table
from vop.utils import setup_logging

setup_logging(snakemake.log[0])
nso_table([{**run, "overlap_csv": path} for run, path in zip(snakemake.params.runs, snakemake.input)],
          snakemake.output[0])
