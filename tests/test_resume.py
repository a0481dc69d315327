"""A run killed mid-way (SIGKILL to its whole process group) resumes to the table of an uninterrupted run,
and leaves no truncated h5, half-written CSV or temp file behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from vop import io

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
TARGET = "results/tiny/auc.csv"

# one evaluation and one training scene: every stage runs, the encoder included
CONFIG = {
    "datasets": {
        "tiny": {
            "source": "synthetic",
            "scenes": ["room_a"],
            "synthetic": {"seed": 5, "num_images": 8, "width": 320, "height": 240},
            "backbone": "dense_sift",
            "methods": ["vop", "cls", "oracle"],
        },
        "tiny_train": {
            "source": "synthetic",
            "scenes": ["train_a"],
            "synthetic": {"seed": 6, "num_images": 8, "width": 320, "height": 240, "textures": "train"},
            "backbone": "dense_sift",
            "methods": [],
        },
    },
    "backbones": {"dense_sift": {"batch_size": 4}},
    "encoders": {
        "vop_tiny": {"type": "vop", "backbone": "dense_sift", "train": {"datasets": ["tiny_train"], "epochs": 3}},
    },
    "labels": {"pairs_per_bin": 5, "num_negative": 5, "stride": 4},
    "methods": {
        "vop": {"type": "vop", "encoder": "vop_tiny", "k": 3, "prefilter": 5, "radius": 0.2, "tfidf": True},
        "cls": {"type": "cls", "k": 3},
        "oracle": {"type": "oracle", "k": 3},
    },
    "local_features": {"max_keypoints": 1024},
}


def workdir(path: Path) -> Path:
    (path / "config").mkdir(parents=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return path


def snakemake(directory: Path, *args: str) -> str:
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(directory), *args], capture_output=True, text=True,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def run_and_kill(directory: Path, when: re.Pattern, delay: float) -> str:
    """Start a run in its own process group; SIGKILL the group `delay` s after a line matches `when`."""
    proc = subprocess.Popen(
        [*SNAKEMAKE, "--directory", str(directory), TARGET],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    matched = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if when.search(line):
                matched.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not matched.wait(timeout=0.5):
            assert proc.poll() is None and time.monotonic() < deadline, "no match:\n" + "".join(lines)[-6000:]
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + "".join(lines)[-6000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        proc.wait()
        reader.join(timeout=10)
    return "".join(lines)


def written_files(directory: Path) -> list[Path]:
    return [p for sub in ("results", "resources") for p in (directory / sub).rglob("*") if p.is_file()]


def assert_nothing_half_written(directory: Path) -> None:
    files = written_files(directory)
    leftovers = [p for p in files if any(re.search(r"\.tmp\d+$", part) for part in p.parts)]
    assert not leftovers, f"temp files left behind: {leftovers}"
    for path in files:
        if path.suffix == ".h5":
            with h5py.File(path, "r") as f:  # a truncated h5 does not open
                assert len(f.keys()) > 0, path
        elif path.suffix == ".csv":
            table = pd.read_csv(path)  # a half-written row has the wrong number of fields
            assert len(table) > 0 and not table.isna().all(axis=1).any(), path


KILLED_WRITER = """
import os, signal, sys
import h5py
from vop import io
with io.atomic_path(sys.argv[1]) as tmp, h5py.File(tmp, "w") as f:
    f["a/global_descriptor"] = [1.0, 2.0]
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # mid-write, as a cluster kills a job
"""


def test_writer_killed_mid_write_leaves_no_output_and_its_temp_goes_with_the_next_write(tmp_path):
    out = tmp_path / "features.h5"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    (leftover,) = tmp_path.iterdir()  # SIGKILL skipped the cleanup: only the temp file is there
    assert leftover.name.startswith(".features.h5.tmp")
    io.write_image_groups(out, {"a": {"global_descriptor": np.ones(2, np.float32)}})
    assert [p.name for p in tmp_path.iterdir()] == ["features.h5"]
    assert io.list_h5_names(out) == ["a"]


@pytest.mark.workflow
def test_killed_run_resumes_to_the_uninterrupted_table(tmp_path):
    reference = workdir(tmp_path / "reference")
    snakemake(reference, TARGET)

    killed = workdir(tmp_path / "killed")
    # train_encoder writes its checkpoint only at the end: one second in, it is mid-way
    log = run_and_kill(killed, re.compile(r"^(local)?rule train_encoder:"), delay=1.0)
    assert "Finished jobid" in log  # some jobs were done before the kill
    markers = [p for p in (killed / ".snakemake" / "incomplete").rglob("*")
               if p.is_file() and p.name != "migration_underway"]
    assert markers, "no job was running when the run was killed"
    assert not (killed / TARGET).exists()
    assert not (killed / "results/encoders/vop_tiny/checkpoint.pt").exists()

    # what a user does after a crash: release the lock, then the same command again
    snakemake(killed, "--unlock")
    out = snakemake(killed, TARGET)
    assert "rule train_encoder:" in out and "rule generate_scene:" not in out  # finished jobs are kept
    assert_nothing_half_written(killed)
    assert_nothing_half_written(reference)
    pd.testing.assert_frame_equal(pd.read_csv(killed / TARGET), pd.read_csv(reference / TARGET))
