"""What progress reporting costs per item: a bare loop, vop.progress writing log lines into a file (as in a
rule's log), and a tqdm bar drawn into /dev/null, over the same items in the same run.

    .venv/bin/python benchmarks/progress.py [--items 1000000]

The stages count images, pairs or batches (milliseconds each): the per-item cost printed here is what
progress adds to each of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from vop.progress import progress


def timed(loop) -> float:
    start = time.perf_counter()
    total = 0
    for item in loop:
        total += item
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    n = args.items
    with tempfile.TemporaryDirectory() as tmp:
        log = logging.getLogger("bench.progress")
        log.propagate = False
        handler = logging.FileHandler(os.path.join(tmp, "rule.log"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        bare = timed(range(n))
        lines = timed(progress(range(n), desc="bench", unit="items", logger=log, terminal=False))
        handler.flush()
        with open(os.path.join(tmp, "rule.log")) as f:
            written = sum(1 for _ in f)
        with open(os.devnull, "w") as null:
            bar = timed(progress(range(n), desc="bench", unit="items", stream=null, terminal=True))
    print(f"items: {n}")
    print(f"bare loop:            {bare / n * 1e9:8.1f} ns/item")
    print(f"vop.progress (log):   {lines / n * 1e9:8.1f} ns/item, {written} lines written")
    print(f"vop.progress (tqdm):  {bar / n * 1e9:8.1f} ns/item")
    print(f"added per item: log {(lines - bare) / n * 1e9:.1f} ns, tqdm {(bar - bare) / n * 1e9:.1f} ns")


if __name__ == "__main__":
    main()
