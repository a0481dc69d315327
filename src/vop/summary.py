"""The run summary: per stage, how many jobs, their wall seconds and peak memory, from the benchmark files.

Every rule writes Snakemake's benchmark of each of its jobs to `logs/.../<rule>[-<name>].benchmark.tsv`
(one file per job, named after the rule: tests/test_summary.py checks every rule), with the columns
`s` (wall seconds), `max_rss` (peak resident memory, MB) and `cpu_time` (seconds), among others; a row
per repeat. A stage's row sums its jobs' seconds and takes their largest peak memory: what took the time,
and what to give more memory on a cluster (compare with the rule's `mem_mb`).

The jobs of a dataset are those under `logs/<dataset>/` and, for each encoder its retrievals used
(`encoder` in retrieval.json), `logs/encoders/<encoder>/`. The stages of the datasets an encoder was
trained on are theirs: name their results folders too.

    vop summary results/demo results/demo_train
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vop.io import atomic_path

BENCHMARK_SUFFIX = ".benchmark.tsv"
COLUMNS = ["stage", "jobs", "wall_s", "longest_s", "cpu_s", "peak_rss_mb"]
HEADERS = {"stage": "stage", "jobs": "jobs", "wall_s": "wall s", "longest_s": "longest job s", "cpu_s": "cpu s",
           "peak_rss_mb": "peak RSS MB"}
TOTAL = "all"


def rule_of(path: str | Path) -> str:
    """The rule of a benchmark file: its name up to the first '-' (features-dinov2_vitl14 -> features)."""
    return Path(path).name.removesuffix(BENCHMARK_SUFFIX).split("-")[0]


@dataclass(frozen=True)
class Job:
    """One benchmark file: a job of `rule`, its wall and CPU seconds (summed over repeats), peak RSS."""

    rule: str
    path: Path
    seconds: float
    cpu_seconds: float
    max_rss_mb: float  # NaN when Snakemake measured none (a job shorter than its sampling interval)


def read_benchmark(path: str | Path) -> Job:
    """The job of one benchmark file; a file that is not Snakemake's benchmark table names itself."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a Snakemake benchmark file ({err}); delete it, its job's next run "
                         "writes it again") from err
    missing = [c for c in ("s", "max_rss") if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no rows, or no column {missing}); delete it, "
                         "its job's next run writes it again")
    cpu = table["cpu_time"].sum() if "cpu_time" in table else float("nan")
    return Job(rule_of(path), path, float(table["s"].sum()), float(cpu), float(table["max_rss"].max()))


def read_benchmarks(log_dirs: Iterable[str | Path]) -> list[Job]:
    """Every job benchmarked under the folders (recursively), each file once, in path order."""
    paths = sorted({p.resolve(): p for d in log_dirs for p in Path(d).rglob(f"*{BENCHMARK_SUFFIX}")}.values())
    return [read_benchmark(p) for p in paths]


def stage_table(jobs: Sequence[Job]) -> pd.DataFrame:
    """One row per stage (rule), most wall seconds first, and the `all` row: the COLUMNS."""
    if not jobs:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame([{"stage": j.rule, "s": j.seconds, "cpu": j.cpu_seconds, "rss": j.max_rss_mb}
                          for j in jobs])
    table = (frame.groupby("stage", sort=False)
             .agg(jobs=("s", "size"), wall_s=("s", "sum"), longest_s=("s", "max"),
                  cpu_s=("cpu", lambda c: c.sum(min_count=1)), peak_rss_mb=("rss", "max"))
             .reset_index()
             .sort_values(["wall_s", "stage"], ascending=[False, True], kind="stable"))
    total = {"stage": TOTAL, "jobs": len(frame), "wall_s": frame["s"].sum(), "longest_s": frame["s"].max(),
             "cpu_s": frame["cpu"].sum(min_count=1), "peak_rss_mb": frame["rss"].max()}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)[COLUMNS]


@dataclass
class RunSummary:
    """The stage table of some results folders, and where it came from."""

    table: pd.DataFrame
    log_dirs: list[Path]
    trained_encoders: list[str] = field(default_factory=list)  # trained here, without their training data named

    def text(self) -> str:
        """The table for a terminal, with what it covers above it."""
        jobs = int(self.table["jobs"].iloc[-1]) if len(self.table) else 0
        lines = [f"Run summary: {jobs} jobs, from the benchmark files under {', '.join(map(str, self.log_dirs))}",
                 "(wall s: summed over the jobs, which may have run in parallel; peak RSS: the largest job's)", ""]
        cells = [[HEADERS[c] for c in COLUMNS]] + [
            [str(row.stage), str(int(row.jobs))] + ["-" if pd.isna(v) else f"{v:.1f}" for v in row[3:]]
            for row in self.table.itertuples()]
        widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
        for r in cells:
            lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
        if self.trained_encoders:
            lines.append(f"\n{', '.join(self.trained_encoders)} trained in this run: name the results folders of "
                         "its training datasets too to count their stages (features, labels)")
        return "\n".join(lines)


def log_dirs_of(results_dir: str | Path, logs_root: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """The log folders of a dataset's results folder (results/<dataset>): logs/<dataset> and, for every
    encoder its retrievals name, logs/encoders/<encoder> when that encoder was trained here. `logs_root`
    defaults to the `logs` folder beside the folder holding `results`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: no such results folder; pass results/<dataset> of a run")
    logs_root = Path(logs_root) if logs_root is not None else results_dir.parent.parent / "logs"
    encoders = set()
    for info in sorted(results_dir.glob("*/*/retrieval.json")):
        try:
            encoder = json.loads(info.read_text()).get("encoder")
        except json.JSONDecodeError as err:
            raise ValueError(f"{info}: not valid JSON ({err}); rerun its retrieval") from err
        if encoder:
            encoders.add(encoder)
    trained = sorted(e for e in encoders if (logs_root / "encoders" / e).is_dir())
    dirs = [logs_root / results_dir.name] + [logs_root / "encoders" / e for e in trained]
    return [d for d in dirs if d.is_dir()], trained


def run_summary(results_dirs: Sequence[str | Path], logs_root: str | Path | None = None) -> RunSummary:
    """The stage table of the jobs behind one or more results folders (see the module docstring)."""
    dirs: list[Path] = []
    trained: list[str] = []
    for results_dir in results_dirs:
        found, encoders = log_dirs_of(results_dir, logs_root)
        dirs += [d for d in found if d not in dirs]
        trained += [e for e in encoders if e not in trained]
    if any(next(Path(r).glob("*/labels.h5"), None) for r in results_dirs):
        trained = []  # training data named (only training scenes have labels): nothing to point out
    if not dirs:
        where = logs_root or "the logs folder beside results/"
        raise FileNotFoundError(f"no logs of {', '.join(map(str, results_dirs))} under {where}; run the workflow "
                                "first, or pass --logs")
    return RunSummary(stage_table(read_benchmarks(dirs)), dirs, trained)


def write_summary(summary: RunSummary, out_tsv: str | Path, out_html: str | Path | None = None,
                  title: str = "") -> None:
    """The table as tab-separated values and, for the report, as an HTML fragment."""
    with atomic_path(out_tsv) as tmp:
        summary.table.to_csv(tmp, sep="\t", index=False, float_format="%.2f", na_rep="NA")
    if out_html is None:
        return
    table = summary.table.rename(columns=HEADERS).to_html(
        index=False, classes="vop-run-summary", border=1, na_rep="-", float_format=lambda v: f"{v:.1f}")
    sources = ", ".join(html.escape(str(d)) for d in summary.log_dirs)
    parts = [f"<h2>{html.escape(title or 'Run summary')}</h2>",
             f"<p>Per stage: jobs, wall seconds (summed over the jobs, which may have run in parallel), the longest "
             f"job, CPU seconds and the peak resident memory of any job, from the benchmark files under {sources}."
             "</p>", table]
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text("\n".join(parts) + "\n")
