"""vop.summary: per-stage jobs, seconds and peak memory from the rules' benchmark files; the run_summary rule
and `vop summary` on the tiny run; every rule's benchmark file named after its rule."""

import json
import logging
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from vop.cli import main as vop_main
from vop.summary import COLUMNS, read_benchmark, rule_of, run_summary, stage_table, write_summary

REPO = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, *rows: tuple) -> Path:
    """A benchmark file as Snakemake writes it, rows of (s, max_rss, cpu_time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s}\t0:00:01\t{rss}\t1.0\t1.0\t1.0\t0.1\t0.1\t50.0\t{cpu}\n" for s, rss, cpu in rows]
    path.write_text(HEADER + "".join(lines))
    return path


@pytest.fixture
def run(tmp_path):
    """A finished run's tree: two scenes, an encoder trained on another dataset, a stale encoder log."""
    logs, results = tmp_path / "logs", tmp_path / "results"
    bench(logs / "d/a/features-dense_sift.benchmark.tsv", (2.5, 300.0, 2.0))
    bench(logs / "d/b/features-dense_sift.benchmark.tsv", (3.5, 320.5, 3.0))
    bench(logs / "d/a/vop/pose.benchmark.tsv", (10.0, 512.0, 18.0))
    bench(logs / "d/b/vop/pose.benchmark.tsv", (12.0, "NA", "NA"))  # too short to be sampled
    bench(logs / "d/a/vop/retrieve.benchmark.tsv", (1.0, 200.0, 0.5), (1.5, 210.0, 0.7))  # repeat: 2
    bench(logs / "d/download_archive-x.zip.benchmark.tsv", (7.0, 90.0, 1.0))
    bench(logs / "encoders/enc/train_encoder.benchmark.tsv", (40.0, 700.0, 39.0))
    bench(logs / "encoders/unused/train_encoder.benchmark.tsv", (99.0, 999.0, 99.0))
    bench(logs / "t/ta/patch_labels.benchmark.tsv", (4.0, 250.0, 3.5))
    for scene in ("a", "b"):
        (results / "d" / scene / "vop").mkdir(parents=True)
        (results / "d" / scene / "vop" / "retrieval.json").write_text(json.dumps({"encoder": "enc", "k": 5}))
    (results / "t" / "ta").mkdir(parents=True)
    (results / "t" / "ta" / "labels.h5").write_bytes(b"")
    return tmp_path


def test_rule_of_a_benchmark_file():
    assert rule_of("logs/d/a/features-dinov2_vitl14.benchmark.tsv") == "features"
    assert rule_of("logs/d/download_archive-ETH3D_undistorted.zip.benchmark.tsv") == "download_archive"
    assert rule_of("logs/d/a/vop/pose.benchmark.tsv") == "pose"


def test_stage_rows_sum_the_jobs_and_keep_the_peak(run):
    summary = run_summary([run / "results/d"])
    assert [d.relative_to(run) for d in summary.log_dirs] == [Path("logs/d"), Path("logs/encoders/enc")]
    assert summary.trained_encoders == ["enc"]  # its training dataset t is not named
    table = summary.table.set_index("stage")
    assert list(summary.table.columns) == COLUMNS
    assert list(table.index) == ["train_encoder", "pose", "download_archive", "features", "retrieve", "all"]
    assert table.loc["pose"].tolist()[:3] == [2, 22.0, 12.0]
    assert table.loc["pose", "cpu_s"] == 18.0 and table.loc["pose", "peak_rss_mb"] == 512.0  # NA: not measured
    assert table.loc["features"].tolist() == [2, 6.0, 3.5, 5.0, 320.5]
    assert table.loc["retrieve"].tolist() == [1, 2.5, 2.5, pytest.approx(1.2), 210.0]  # repeats: one job
    assert table.loc["all"].tolist() == [7, pytest.approx(77.5), 40.0, pytest.approx(64.2), 700.0]

    text = summary.text()
    assert "Run summary: 7 jobs, from the benchmark files under" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if re.match(r"^\w+ +\d+ ", line)}
    assert rows["pose"] == ["2", "22.0", "12.0", "18.0", "512.0"]
    assert rows["all"] == ["7", "77.5", "40.0", "64.2", "700.0"]
    assert "enc trained in this run: name the results folders of its training datasets" in text


def test_training_datasets_can_be_named_too(run, capsys):
    handlers = logging.getLogger().handlers[:]
    summary = run_summary([run / "results/d", run / "results/t"])
    assert summary.table.set_index("stage").loc["patch_labels", "wall_s"] == 4.0
    assert summary.trained_encoders == []  # training scenes (labels.h5) named: nothing to point out
    assert vop_main(["summary", str(run / "results/d"), str(run / "results/t"), "--tsv", str(run / "s.tsv")]) == 0
    assert logging.getLogger().handlers == handlers  # the command's logging set-up is undone on return
    out = capsys.readouterr().out
    assert re.search(r"^all +8 +81\.5 +40\.0 +67\.7 +700\.0$", out, flags=re.MULTILINE)
    written = pd.read_csv(run / "s.tsv", sep="\t")
    pd.testing.assert_frame_equal(written, summary.table.round(2), check_dtype=False)


def test_html_fragment_and_bad_input(run, tmp_path):
    summary = run_summary([run / "results/d"])
    write_summary(summary, tmp_path / "s.tsv", tmp_path / "s.html", title="Run summary of dataset d")
    page = (tmp_path / "s.html").read_text()
    assert '<table border="1" class="dataframe vop-run-summary">' in page and "<td>22.0</td>" in page
    assert "<h2>Run summary of dataset d</h2>" in page
    broken = run / "logs/d/a/ground_truth.benchmark.tsv"
    broken.write_text("not a table\n")
    with pytest.raises(ValueError, match=r"ground_truth\.benchmark\.tsv: not a Snakemake benchmark file.*delete it"):
        read_benchmark(broken)
    with pytest.raises(FileNotFoundError, match="results/nope: no such results folder"):
        run_summary([run / "results/nope"])
    assert stage_table([]).empty and math.isnan(read_benchmark(run / "logs/d/b/vop/pose.benchmark.tsv").max_rss_mb)


def test_every_rule_has_a_log_and_a_benchmark_named_after_it():
    """The summary finds a job's rule from its benchmark file's name."""
    rules = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        for block in re.split(r"^(?=rule )", smk.read_text(), flags=re.MULTILINE)[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            benchmark = re.search(r"^    benchmark:\n(?:\s+#.*\n)*\s+\"([^\"]+)\"", block, flags=re.MULTILINE)
            assert re.search(r"^    log:\n", block, flags=re.MULTILINE), f"rule {name} has no log:"
            assert benchmark, f"rule {name} has no benchmark:"
            rules[name] = benchmark.group(1)
    assert len(rules) >= 14
    for name, path in rules.items():
        assert rule_of(path) == name, f"rule {name}: benchmark {path} must be named {name}[-...].benchmark.tsv"


@pytest.mark.workflow
def test_run_summary_rule_and_command_equal_the_benchmark_files(tiny_run, capsys):
    from test_workflow import snakemake

    snakemake(tiny_run, "results/tiny/run_summary.html")
    table = pd.read_csv(tiny_run / "results/tiny/run_summary.tsv", sep="\t").set_index("stage")
    # The tiny run's jobs: its dataset's, its trained encoder's and its training dataset's.
    files = [p for d in ("logs/tiny", "logs/tiny_train", "logs/encoders/vop_tiny")
             for p in (tiny_run / d).rglob("*.benchmark.tsv")]
    seconds: dict[str, float] = {}
    for path in files:
        seconds[rule_of(path)] = seconds.get(rule_of(path), 0.0) + pd.read_csv(path, sep="\t")["s"].sum()
    assert set(table.index) == {*seconds, "all"}
    assert {"features", "patch_labels", "train_encoder", "retrieve", "pose", "plots"} <= set(seconds)
    for rule, s in seconds.items():
        assert table.loc[rule, "wall_s"] == pytest.approx(s, abs=0.006), rule
    assert table.loc["all", "jobs"] == len(files) and table.loc["pose", "jobs"] == 10  # 5 methods x 2 scenes
    assert table.loc["all", "wall_s"] == pytest.approx(sum(seconds.values()), abs=0.01)

    assert vop_main(["summary", str(tiny_run / "results/tiny"), str(tiny_run / "results/tiny_train")]) == 0
    out = capsys.readouterr().out
    pose = next(line for line in out.splitlines() if line.startswith("pose "))
    assert pose.split()[:3] == ["pose", "10", f"{table.loc['pose', 'wall_s']:.1f}"]
    page = (tiny_run / "results/tiny/run_summary.html").read_text()
    assert 'class="dataframe vop-run-summary"' in page
