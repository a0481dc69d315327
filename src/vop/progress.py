"""Progress of long stages: a tqdm bar on a terminal, plain lines in the rule's log otherwise.

Snakemake rules log through `vop.utils.setup_logging(log_file)` into their log file, where a bar's
carriage returns would be noise. There, progress is written through `logging` (logger "vop.progress"
unless the caller gives one) as lines such as

    features: 512/10000 (5%) 41.3 images/s, 3m50s left

one each time another `every_percent` (5%) of the total is done or `every_seconds` (30 s) have passed
since the previous line, whichever comes first (so a fast loop writes about 20 lines, a slow one a
line every 30 s while it advances), and a final line when the total is reached or the loop stops.
The rate is the average since the start; the time left is what remains at that rate. With unit "B"
counts read as sizes ("download x.zip: 1.2 GB/5.6 GB (21%) 41.3 MB/s, 1m47s left"); `initial` is work
done before (a resumed download), counted in the total but not in the rate.

A tqdm bar is used instead when nothing of the logger's writes to a file and stderr (or the given
stream) is a terminal, or in a Jupyter notebook. Lines are only written from `update`: a loop that
hangs writes nothing until it advances.

    for name in progress(names, desc="features", unit="images"): ...
    with Progress(total_bytes, "download", unit="B") as bar: bar.update(len(chunk))
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

LOGGER = "vop.progress"


def _duration(seconds: float) -> str:
    """12s, 3m50s, 2h05m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    if rate >= 1:
        return f"{rate:.2f}"
    return f"{rate:.3g}"


def _size(n: float) -> str:
    """1.2 GB, 41.3 MB, 512 B (powers of 1000, as download sizes are quoted)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _logs_to_file(logger: logging.Logger) -> bool:
    """Whether a handler that the logger's INFO records reach writes to a file (as setup_logging(log_file) sets
    up); /dev/null (pytest's default log file) does not count."""
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if (isinstance(handler, logging.FileHandler) and handler.level <= logging.INFO
                    and handler.baseFilename != os.path.abspath(os.devnull)):
                return True
        node = node.parent if node.propagate else None
    return False


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Counts work done toward `total` (None: unknown) and reports it; use as a context manager or close().

    `terminal`: True for a tqdm bar, False for log lines, None to decide (see the module docstring).
    `clock` is injectable for tests. Thread-safe: several workers may call update().
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *, initial: int = 0,
                 logger: logging.Logger | str | None = None, stream: TextIO | None = None,
                 terminal: bool | None = None, every_percent: float = 5.0, every_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None, got {total}")
        if every_percent <= 0 or every_seconds < 0:
            raise ValueError("every_percent must be > 0 and every_seconds >= 0 (0: a line on every update)")
        self.total, self.desc, self.unit, self.done, self.initial = total, desc, unit, initial, initial
        self.logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or LOGGER)
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self._clock = clock
        self._start = self._last = clock()
        self._next = self._mark_after(initial)
        self._lock = threading.Lock()
        self._finished = False
        self._bar = self._redirect = None
        stream = stream if stream is not None else sys.stderr
        if terminal is None:
            terminal = not _logs_to_file(self.logger) and (_in_notebook() or _is_terminal(stream))
        if terminal:
            self._open_bar(stream)

    def _open_bar(self, stream: TextIO) -> None:
        try:
            if _in_notebook():
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
        except ImportError:  # no tqdm: log lines then
            return
        options = {"total": self.total, "desc": self.desc or None, "unit": self.unit, "initial": self.initial,
                   "file": stream, "dynamic_ncols": True}
        if self.unit == "B":
            options.update(unit_scale=True, unit_divisor=1000)
        try:
            self._bar = tqdm(**options)
        except ImportError:  # a notebook without ipywidgets: tqdm.notebook refuses, the text bar works there
            from tqdm import tqdm
            self._bar = tqdm(**options)
        # Log records printed to the console while the bar is shown go through tqdm.write, above the bar.
        self._redirect = logging_redirect_tqdm(tqdm_class=type(self._bar))
        self._redirect.__enter__()

    def _mark_after(self, done: int) -> float:
        """The count at which the next percent line is due."""
        if not self.total:
            return math.inf
        step = self.total * self.every_percent / 100
        return (math.floor(done / step) + 1) * step

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else math.inf
        if self.unit == "B":
            amount, speed = _size, (f"{_size(rate)}/s" if math.isfinite(rate) else "? B/s")
        else:
            amount, speed = str, (f"{_rate(rate)} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s")
        prefix = f"{self.desc}: " if self.desc else ""
        if self.total is None:
            unit = "" if self.unit == "B" else f" {self.unit}"
            return f"{prefix}{amount(self.done)}{unit} in {_duration(elapsed)}, {speed}"
        percent = 100 * self.done // self.total if self.total else 100
        count = f"{amount(self.done)}/{amount(self.total)} ({percent}%)"
        if final and self.done >= self.total:
            return f"{prefix}{count} in {_duration(elapsed)}, {speed}"
        if final:
            return f"{prefix}stopped at {count} after {_duration(elapsed)}, {speed}"
        left = _duration((self.total - self.done) / rate) if rate > 0 and math.isfinite(rate) else "?"
        return f"{prefix}{count} {speed}, {left} left"

    def update(self, n: int = 1) -> None:
        """Record n more items done."""
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
                return
            if self._finished:
                return
            now = self._clock()
            if self.total is not None and self.done >= self.total:
                self._finished = True
                self.logger.info("%s", self._line(now, final=True))
            elif self.done >= self._next or now - self._last >= self.every_seconds:
                self.logger.info("%s", self._line(now))
                self._next, self._last = self._mark_after(self.done), now

    def close(self) -> None:
        """The final line (or closes the bar): done, or stopped short of the total."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._redirect.__exit__(None, None, None)
                self._bar = None
                self._finished = True
            if not self._finished:
                self._finished = True
                self.logger.info("%s", self._line(self._clock(), final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             **options) -> Iterator[T]:
    """Yield the items of `iterable`, reporting progress (see Progress for `options`).

    `total` defaults to len(iterable) when it has one. An item counts as done when the next is asked
    for; leaving the loop early (break, exception) writes a "stopped at" line.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            pass
    with Progress(total, desc, unit, **options) as bar:
        for item in iterable:
            yield item
            bar.update()
