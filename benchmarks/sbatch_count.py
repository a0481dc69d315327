"""How many SLURM submissions (sbatch calls) a run makes, with and without the profile's group jobs.

    .venv/bin/python benchmarks/sbatch_count.py results/eth3d/auc.csv     # in a working directory with a config

Runs Snakemake's dry run in this process with profiles/slurm and counts what the executor would submit:
every job that is not a local rule, a group job (as Snakemake forms it, `group-components` included)
counting once. Without the profile's `groups:` every such job is one call. Nothing is submitted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def count(targets: list[str], profile: Path) -> tuple[int, int]:
    """(submissions, jobs) of a dry run of `targets` with `profile`."""
    from snakemake.cli import main as snakemake_main  # before snakemake.dag: they import each other
    from snakemake.dag import DAG

    found: dict[str, int] = {}
    update_groups = DAG.update_groups

    def counting(dag):
        update_groups(dag)
        # a dry run executes locally, so job.is_local is always true: the rule's localrule flag decides
        local = dag.workflow._localrules
        jobs = [j for j in dag.jobs if j.rule.name not in local and not j.rule.norun]
        groups = {id(dag._group[j]) for j in jobs if j in dag._group}
        found.update(submissions=len(groups) + sum(j not in dag._group for j in jobs), jobs=len(jobs))

    DAG.update_groups = counting
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            with contextlib.suppress(SystemExit):
                snakemake_main(["-s", str(REPO / "Snakefile"), "--profile", str(profile), "-n", *targets])
    finally:
        DAG.update_groups = update_groups
    if not found:
        sys.exit("the dry run failed: run `snakemake -n` on the same targets to see why")
    return found["submissions"], found["jobs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()
    grouped, jobs = count(args.targets, REPO / "profiles" / "slurm")
    # without groups every cluster job is one sbatch call
    print(f"{' '.join(args.targets)}: {jobs} cluster jobs, so {jobs} sbatch calls without groups; "
          f"{grouped} with the profile's groups")

if __name__ == "__main__":
    main()
