"""GL3D matchable image retrieval (MIRorR, hlzz/mirror): mAP@200 of the retrieved lists against overlap pairs.

Every image of `eval_img_list.txt` queries all of them (itself included). MIRorR's `retrieval/deep_query.py`
writes the top 200 per query to `match_pairs` as `i j score` (0-based line numbers of the image list), the
query's own entry `i i` among them: a descriptor's similarity to itself is the highest, so it comes first.
`retrieval/compute_overlap_benchmark.py` drops every `i i` entry before scoring, so the self pair takes one
of the 200 places but counts neither as a hit nor as a rank. Ground-truth pairs `i j` are directed: a line
makes j a partner of i only (`gt_vec[index1].append(index2)`), and queries without partners are skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vop.io import atomic_path

logger = logging.getLogger(__name__)

TOP_K = 200
SELF_SCORE = 1.0  # cosine similarity of an L2-normalised descriptor with itself, deep_query's self-pair score


def read_image_list(path: str | Path, root: str | Path | None = None) -> list[str]:
    """Image paths, one per line, joined to `root` unless absolute; trailing blank lines are ignored.

    A blank line before the last image is an error: pair files index the list by line number, and skipping
    the line would shift every later index.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise ValueError(f"{path}:{lineno}: blank line inside the image list; pair files index images by "
                             "line number, so remove the line only if the pair files were made without it")
        out.append(name if root is None or os.path.isabs(name) else os.path.join(str(root), name))
    return out


def read_gt_pairs(path: str | Path, num_images: int) -> list[list[int]]:
    """Per image, its ground-truth partners from lines `i j` (0-based), in file order; `i i` lines are skipped.

    Directed like the original: `i j` adds j to i's partners only. A repeated line is kept, as MIRorR keeps
    it (`gt_vec[i].append(j)`): it counts twice in |gt|, so that query's AP can no longer reach 1; it is
    logged with the file to fix.
    """
    path = Path(path)
    gt: list[list[int]] = [[] for _ in range(num_images)]
    seen: set[tuple[int, int]] = set()
    duplicates = 0
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                i, j = int(parts[0]), int(parts[1])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{lineno}: expected 'i j' (0-based image indices), got {line.strip()!r}")\
                    from None
            if not (0 <= i < num_images and 0 <= j < num_images):
                raise ValueError(f"{path}:{lineno}: pair ({i}, {j}) is outside the {num_images} images of the "
                                 "image list; the pairs belong to another list")
            if i == j:
                continue
            duplicates += (i, j) in seen
            seen.add((i, j))
            gt[i].append(j)
    if duplicates:
        logger.warning("%s: %d repeated pair line(s); MIRorR counts each again in |gt| and so do we: remove them "
                       "if they are mistakes", path, duplicates)
    return gt


def write_match_pairs(path: str | Path, rankings: Sequence[Sequence[int]], scores: Sequence[Sequence[float]],
                      self_scores: Sequence[float] | None = None) -> None:
    """MIRorR's `match_pairs`: `i j score` per line, query i's list starting with its self pair `i i`.

    `rankings[i]` are database indices best first; an entry equal to i is not written twice. The self pair's
    score is `self_scores[i]`, by default SELF_SCORE (deep_query writes the query's similarity with itself,
    1 for normalised descriptors). So K retrieved images give K + 1 lines, as `--top K + 1` would.
    """
    if len(rankings) != len(scores):
        raise ValueError(f"{len(rankings)} rankings but {len(scores)} score lists")
    if self_scores is not None and len(self_scores) != len(rankings):
        raise ValueError(f"{len(self_scores)} self scores for {len(rankings)} queries")
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for i, (ranked, score) in enumerate(zip(rankings, scores, strict=True)):
            if len(ranked) != len(score):
                raise ValueError(f"query {i}: {len(ranked)} retrieved images but {len(score)} scores")
            self_score = SELF_SCORE if self_scores is None else float(self_scores[i])
            f.write(f"{i} {i} {self_score!r}\n")
            for j, s in zip(ranked, score, strict=True):
                if int(j) != i:
                    f.write(f"{i} {int(j)} {float(s)!r}\n")


def read_match_pairs(path: str | Path, num_images: int) -> tuple[list[list[int]], list[list[float]]]:
    """(rankings, scores) per query from a match_pairs file, lines in file order, self pairs kept."""
    path = Path(path)
    rankings: list[list[int]] = [[] for _ in range(num_images)]
    scores: list[list[float]] = [[] for _ in range(num_images)]
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                i, j, s = int(parts[0]), int(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{lineno}: expected 'i j score', got {line.strip()!r}") from None
            if not (0 <= i < num_images and 0 <= j < num_images):
                raise ValueError(f"{path}:{lineno}: pair ({i}, {j}) is outside the {num_images} images")
            rankings[i].append(j)
            scores[i].append(s)
    return rankings, scores


def overlap_ap(retrieved: Sequence[int], partners: Sequence[int]) -> float:
    """`compute_overlap_ap`: trapezoids from (recall 0, precision 1), one step per retrieved image.

    |gt| is len(partners), repeats included, as in the original; a retrieved image is a hit when it is
    among the partners, and a repeated hit counts again; partners never retrieved add nothing.
    """
    partners = np.asarray(list(partners), np.int64)
    if partners.size == 0:
        raise ValueError("a query without ground-truth partners has no AP; it is left out of the mean")
    hits = np.cumsum(np.isin(np.asarray(retrieved, np.int64), partners))
    if hits.size == 0:
        return 0.0
    recall = np.r_[0.0, hits / partners.size]
    precision = np.r_[1.0, hits / np.arange(1, hits.size + 1)]
    return float(np.sum(np.diff(recall) * (precision[:-1] + precision[1:]) / 2.0))


def overlap_aps(rankings: Sequence[Sequence[int]], gt: Sequence[Sequence[int]], k: int = TOP_K) -> np.ndarray:
    """(N,) AP per query (NaN without partners) over the first k entries of each list, self entries dropped."""
    if len(rankings) != len(gt):
        raise ValueError(f"{len(rankings)} rankings for {len(gt)} images of the ground truth: every image of "
                         "the list must be a query")
    aps = np.full(len(gt), np.nan)
    for i, (ranked, partners) in enumerate(zip(rankings, gt, strict=True)):
        if len(partners):
            aps[i] = overlap_ap([j for j in list(ranked)[:k] if j != i], partners)
    return aps


def map_at_k(rankings: Sequence[Sequence[int]], gt: Sequence[Sequence[int]], k: int = TOP_K) -> float:
    """`compute_GL3D_map` on lists cut to k entries: mean AP over the queries with partners.

    `rankings[i]` is query i's list as in match_pairs, best first. k counts the entries the file holds,
    self pair included (deep_query's `--top`), and the self entry is then dropped: a list written with its
    self pair first (write_match_pairs) is scored on its k - 1 best other images, exactly like MIRorR's
    mAP@200; a list without the self pair, on its first k. Shorter lists are scored on what they hold.
    """
    aps = overlap_aps(rankings, gt, k)
    scored = ~np.isnan(aps)
    if not scored.any():
        raise ValueError("no image has a ground-truth partner, so mAP is undefined; "
                         "the gt pairs file is empty or belongs to another image list")
    return float(aps[scored].mean())
