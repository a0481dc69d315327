"""vop.progress: log lines on a fake clock (rate, time left, refresh policy), and tqdm on a terminal."""

import io
import logging
import re
import sys

import pytest

from vop.progress import Progress, progress
from vop.utils import setup_logging


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "vop.progress"]


def test_fast_loop_writes_a_line_every_5_percent(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="vop.progress")
    with Progress(10000, "features", unit="images", terminal=False, clock=clock) as bar:
        for i in range(10000):
            clock.t = (i + 1) * 0.01  # 100 images/s
            bar.update()
    lines = _lines(caplog)
    assert lines[0] == "features: 500/10000 (5%) 100 images/s, 1m35s left"
    assert lines[9] == "features: 5000/10000 (50%) 100 images/s, 50s left"
    assert lines[-1] == "features: 10000/10000 (100%) in 1m40s, 100 images/s"
    assert len(lines) == 20 <= 25  # 19 percent lines and the final one
    assert not any("\r" in line for line in lines)


def test_slow_loop_writes_a_line_every_30_seconds(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="vop.progress")
    for i in progress(range(1000), desc="pose", unit="pairs", terminal=False, clock=clock):
        clock.t = (i + 1) * 2.0  # 0.5 pairs/s: 5% takes 100 s
    lines = _lines(caplog)
    assert lines[0] == "pose: 15/1000 (1%) 0.5 pairs/s, 32m50s left"  # 30 s in
    assert lines[-1] == "pose: 1000/1000 (100%) in 33m20s, 0.5 pairs/s"
    counts = [int(re.match(r"pose: (\d+)/", line).group(1)) for line in lines]
    assert all(b - a <= 15 for a, b in zip(counts, counts[1:], strict=False))  # never more than 30 s apart
    assert 1000 // 15 <= len(lines) <= 1000 // 15 + 20  # the 30 s lines, some 5% ones, the final one


def test_rate_and_time_left_follow_the_average_since_the_start(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="vop.progress")
    bar = Progress(100, "x", unit="images", terminal=False, clock=clock, every_seconds=1e9)
    clock.t = 10.0
    bar.update(5)  # 0.5 images/s, 95 left -> 190 s
    clock.t = 12.0
    bar.update(5)  # 10 in 12 s: 0.833/s, 90 left -> 108 s
    assert _lines(caplog) == ["x: 5/100 (5%) 0.5 images/s, 3m10s left", "x: 10/100 (10%) 0.833 images/s, 1m48s left"]
    clock.t = 3 * 3600 + 20 * 60
    bar.update(80)
    bar.close()
    assert _lines(caplog)[-2:] == ["x: 90/100 (90%) 0.0075 images/s, 22m13s left",
                                   "x: stopped at 90/100 (90%) after 3h20m, 0.0075 images/s"]


def test_a_big_step_writes_one_line(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="vop.progress")
    with Progress(1000, "copy", terminal=False, clock=clock) as bar:
        clock.t = 1.0
        bar.update(420)  # crosses 8 marks: one line, then the next mark is 450
        clock.t = 2.0
        bar.update(20)
        bar.update(10)
    assert _lines(caplog) == ["copy: 420/1000 (42%) 420 it/s, 1s left", "copy: 450/1000 (45%) 225 it/s, 2s left",
                              "copy: stopped at 450/1000 (45%) after 2s, 225 it/s"]


def test_unknown_total_and_leaving_early(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="vop.progress")

    def items():
        yield from range(100)

    for i in progress(items(), desc="scan", terminal=False, clock=clock):
        clock.t = (i + 1) * 10.0
    assert _lines(caplog)[0] == "scan: 3 it in 30s, 0.1 it/s"
    assert _lines(caplog)[-1] == "scan: 100 it in 16m40s, 0.1 it/s"

    caplog.clear()
    for i in progress(list(range(10)), desc="early", terminal=False, clock=clock, every_percent=50):
        if i == 3:
            break
    assert _lines(caplog)[-1].startswith("early: stopped at 3/10 (30%)")


def test_an_exception_in_the_loop_writes_the_stopped_line(caplog):
    caplog.set_level(logging.INFO, logger="vop.progress")
    with pytest.raises(RuntimeError):
        with Progress(10, "x", terminal=False) as bar:
            bar.update(2)
            raise RuntimeError("boom")
    assert _lines(caplog)[-1].startswith("x: stopped at 2/10 (20%)")


def test_the_callers_logger_is_used(caplog):
    caplog.set_level(logging.INFO)
    with Progress(2, "x", logger="vop.features", terminal=False) as bar:
        bar.update(2)
    assert [r.name for r in caplog.records if r.getMessage().startswith("x: 2/2")] == ["vop.features"]


def test_terminal_gets_a_tqdm_bar(caplog):
    tqdm = pytest.importorskip("tqdm")
    stream = FakeTTY()
    caplog.set_level(logging.INFO, logger="vop.progress")
    with Progress(10, "features", unit="images", stream=stream) as bar:
        assert isinstance(bar._bar, tqdm.tqdm)
        for _ in range(10):
            bar.update()
    out = stream.getvalue()
    assert "\r" in out and "features" in out and "10/10" in out
    assert _lines(caplog) == []  # no log lines besides the bar


def test_not_a_terminal_gets_lines():
    with Progress(10, "x", stream=io.StringIO()) as bar:
        assert bar._bar is None


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], sys.excepthook = handlers, hook
    root.setLevel(level)


def test_rule_log_gets_lines_even_when_stderr_is_a_terminal(tmp_path, restore_logging):
    # Snakemake's local jobs inherit the terminal, but the rule's log is where progress belongs.
    log = tmp_path / "features.log"
    setup_logging(str(log))
    stream = FakeTTY()
    for _ in progress(range(100), desc="features", unit="images", stream=stream):
        pass
    logging.getLogger().handlers[0].flush()
    text = log.read_text()
    assert stream.getvalue() == ""
    assert "vop.progress: features: 5/100 (5%)" in text and "features: 100/100 (100%) in 0s" in text
    assert "\r" not in text and len(text.splitlines()) == 20


def test_sizes_and_a_resumed_start(caplog):
    # A download resumed at 40 MB of 100 MB: the rate counts this run's bytes only, the share all of them.
    clock = Clock()
    caplog.set_level(logging.INFO, logger="vop.progress")
    with Progress(100_000_000, "download x.zip", unit="B", initial=40_000_000, terminal=False, clock=clock,
                  every_seconds=0) as bar:
        clock.t = 2.0
        bar.update(10_000_000)  # 5 MB/s, 50 MB left -> 10 s
        clock.t = 3.0
        bar.update(1_000)  # every_seconds=0: a line on every update
    assert _lines(caplog) == ["download x.zip: 50.0 MB/100.0 MB (50%) 5.0 MB/s, 10s left",
                              "download x.zip: 50.0 MB/100.0 MB (50%) 3.3 MB/s, 15s left",
                              "download x.zip: stopped at 50.0 MB/100.0 MB (50%) after 3s, 3.3 MB/s"]
    caplog.clear()
    with Progress(None, "read", unit="B", terminal=False, clock=clock) as bar:  # unknown size
        clock.t = 5.0
        bar.update(2_500_000_000)
    assert _lines(caplog) == ["read: 2.5 GB in 2s, 1.2 GB/s"]


def test_a_notebook_gets_a_bar(monkeypatch):
    pytest.importorskip("tqdm")

    class ZMQInteractiveShell:  # what IPython.get_ipython() returns in a Jupyter kernel
        pass

    monkeypatch.setitem(sys.modules, "IPython", type(sys)("IPython"))
    sys.modules["IPython"].get_ipython = ZMQInteractiveShell
    stream = io.StringIO()  # not a terminal: outside a notebook this would be log lines
    with Progress(4, "features", unit="images", stream=stream) as bar:
        assert bar._bar is not None
        bar.update(4)
    # Without a real kernel tqdm.auto falls back to the text bar, on the given stream.
    assert "features" in stream.getvalue() and "4/4" in stream.getvalue()


class SquarePairs:
    """A per-pair task as vop.pose.run_pairs hands to its workers (pose, verify): one row per pair."""

    def pairs(self, pairs):
        return [(a, b, a * b) for a, b in pairs]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_per_pair_work_counts_the_rows_as_they_come_back(caplog, num_workers):
    from vop.pose import run_pairs

    caplog.set_level(logging.INFO, logger="vop.pose")
    pairs = [(i, i + 1) for i in range(200)]
    rows = run_pairs(SquarePairs(), pairs, num_workers)
    assert rows == [(a, b, a * b) for a, b in pairs]  # in order, every pair once
    lines = [r.getMessage() for r in caplog.records if r.name == "vop.pose"]
    done = [int(m.group(1)) for m in map(re.compile(r"^pose: (\d+)/200 \(\d+%\)").match, lines) if m]
    assert len(done) >= 10 and done == sorted(set(done)) and done[-1] == 200, lines
    assert re.fullmatch(r"pose: 200/200 \(100%\) in \w+, [\d.]+ pairs/s", lines[-1])
