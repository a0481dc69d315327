"""Speed of the protocols' per-query work at real scale, against straightforward versions in the same run.

    PYTHONPATH=src python benchmarks/protocols_speed.py [--repeats 3]

1. VPR recall: the rank of each query's first positive, Pitts30k-test scale (6816 queries, 10000 database
   images, top 20, ~20 positives each): ours (one membership test of (query, image) keys) against a loop
   over queries with np.isin per query, the way GeoWarp's compute_recalls does it.
2. The oracle by relevance, GL3D scale (9368 images, register mode, ~25 graded partners per image, k = 199):
   ours (sort the sparse grades once, fill each list from the rest) against a dense (Q, N) score matrix
   sorted per row.

Both pairs must agree exactly; prints seconds (best of the repeats) and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vop.conf import OracleConf
from vop.io import Relevance
from vop.protocols.vpr import first_positive_rank
from vop.retrieval import retrieve_oracle


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def straightforward_first_rank(rankings, positives):
    first = np.full(len(rankings), np.inf)
    for q, (row, pos) in enumerate(zip(rankings, positives, strict=True)):
        hit = np.flatnonzero(np.isin(row, pos))
        if hit.size:
            first[q] = hit[0]
    return first


def dense_oracle(relevance: Relevance, n: int, k: int) -> np.ndarray:
    score = np.zeros((n, n))
    score[relevance.query, relevance.db] = relevance.grade
    np.fill_diagonal(score, -np.inf)  # never the query itself
    # grade descending, then database order; keep k
    return np.lexsort((np.broadcast_to(np.arange(n), score.shape), -score), axis=1)[:, :k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    num_q, num_db = 6816, 10000
    rankings = np.stack([rng.choice(num_db, 20, replace=False) for _ in range(num_q)])
    positives = [np.sort(rng.choice(num_db, rng.integers(0, 40), replace=False)) for _ in range(num_q)]
    for q in range(0, num_q, 3):  # a third of the queries find a positive in their list
        positives[q] = np.union1d(positives[q], rankings[q, rng.integers(0, 20)])
    ours_t, ours = best_of(args.repeats, lambda: first_positive_rank(rankings, positives))
    ref_t, ref = best_of(args.repeats, lambda: straightforward_first_rank(rankings, positives))
    assert np.array_equal(ours, ref)
    print(f"vpr first positive rank ({num_q} queries x 20): ours {ours_t:.3f} s, per-query loop {ref_t:.3f} s, "
          f"ratio {ref_t / ours_t:.1f}")

    n, k = 9368, 199
    counts = rng.integers(0, 50, n)
    query = np.repeat(np.arange(n), counts)
    db = rng.integers(0, n, len(query))
    keep = query != db
    pairs = np.unique(np.stack([query[keep], db[keep]], 1), axis=0)
    relevance = Relevance(pairs[:, 0], pairs[:, 1], np.ones(len(pairs), np.float32))
    ours_t, ours = best_of(args.repeats, lambda: retrieve_oracle(OracleConf(k=k), None, relevance=relevance,
                                                                 num_images=n).db)
    ref_t, ref = best_of(args.repeats, lambda: dense_oracle(relevance, n, k))
    assert np.array_equal(ours, ref)
    print(f"oracle by relevance ({n} images, {len(pairs)} graded pairs, k={k}): ours {ours_t:.3f} s, "
          f"dense (N, N) sort {ref_t:.3f} s, ratio {ref_t / ours_t:.1f}")


if __name__ == "__main__":
    main()
