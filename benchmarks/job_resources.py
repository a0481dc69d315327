"""Peak memory and time per rule of a finished run, from Snakemake's benchmark files, beside what each
rule asks SLURM for: the numbers the `threads`/`mem_mb` of workflow/rules/*.smk are sized from.

    .venv/bin/snakemake --cores all results/demo/auc.csv
    .venv/bin/python benchmarks/job_resources.py            # in the run's working directory

Rule names come from the benchmark paths (logs/<dataset>/<scene>/<rule>[-<backbone|encoder>].benchmark.tsv),
read by vop.summary, which `vop summary results/<dataset>` prints per dataset.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from vop.summary import read_benchmarks


def measured(log_dir: Path) -> pd.DataFrame:
    jobs = read_benchmarks([log_dir])
    if not jobs:
        sys.exit(f"no *.benchmark.tsv under {log_dir}: run the workflow first")
    return (
        pd.DataFrame([{"rule": j.rule, "s": j.seconds, "max_rss": j.max_rss_mb} for j in jobs])
        .groupby("rule")
        .agg(jobs=("s", "size"), max_s=("s", "max"), max_rss_mb=("max_rss", "max"))
        .round(1)
    )


def requested(target: str) -> pd.DataFrame:
    """threads and mem_mb per rule as Snakemake resolves them (a forced dry run of `target`)."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-F", "--cores", "64", target],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = {}
    for block in out.split("\nrule ")[1:] + out.split("\nlocalrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        threads = re.search(r"threads: (\d+)", block)
        mem = re.search(r"mem_mb=(\d+)", block)
        gpu = re.search(r"gpu=(\d+)", block)
        rows[rule] = {
            "threads": int(threads.group(1)) if threads else 1,
            "mem_mb": int(mem.group(1)) if mem else None,
            "gpu": int(gpu.group(1)) if gpu else 0,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, default=Path("logs"), help="the run's log folder")
    parser.add_argument("--target", default="results/demo/auc.csv", help="what the run made")
    args = parser.parse_args(argv)
    table = measured(args.logs).join(requested(args.target), how="left")
    table["rss/mem_mb"] = (table["max_rss_mb"] / table["mem_mb"]).round(2)
    print(table.to_string())


if __name__ == "__main__":
    main()
