"""Revisited Oxford and Paris (filipradenovic/revisitop): mAP and mP@k under the Easy/Medium/Hard protocols.

The ground truth is `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl`: a dict with `imlist`, `qimlist` and `gnd`, one
dict per query with `bbx`, `easy`, `hard`, `junk`. It is read with an unpickler that builds only plain
containers and numpy arrays, so a tampered file cannot run code. The metrics follow `python/evaluate.py`
(`compute_ap`, `compute_map`) number for number; `benchmarks/check_protocols.py` compares them.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROTOCOLS = ("easy", "medium", "hard")
KAPPAS = (1, 5, 10)

# The globals a pickle of dicts, lists, strings and numpy arrays/scalars refers to, for numpy 1.x and 2.x and
# pickle protocols 0-5 (protocols < 3 store bytes as `_codecs.encode(str, "latin1")`).
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    *((m, "_reconstruct") for m in _NUMPY_CORE),
    *((m, "scalar") for m in _NUMPY_CORE),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
}


class _GroundTruthUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of `_ALLOWED`; anything else is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"{self.path}: refusing global {module}.{name}; a revisitop ground truth holds only dicts, "
                "lists, strings and numpy arrays. The file is not gnd_roxford5k.pkl / gnd_rparis6k.pkl or has "
                "been tampered with: download it again from revisitop")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.split(".", 2)[2]  # numpy 2 warns on numpy.core
        return super().find_class(module, name)


@dataclass(frozen=True)
class QueryGround:
    """One query's annotation: its box (x1, y1, x2, y2) and database indices per label."""

    bbx: np.ndarray  # (4,) float64
    easy: np.ndarray  # int64
    hard: np.ndarray
    junk: np.ndarray


@dataclass(frozen=True)
class Ground:
    """A revisitop ground truth: database and query image names, and one `QueryGround` per query."""

    imlist: list[str]
    qimlist: list[str]
    queries: list[QueryGround]


def _indices(value, path: Path, q: int, key: str) -> np.ndarray:
    arr = np.asarray(value).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: gnd[{q}][{key!r}] is not a list of indices (dtype {arr.dtype})")
    out = arr.astype(np.int64)
    if arr.size and not np.array_equal(out, arr):
        raise ValueError(f"{path}: gnd[{q}][{key!r}] holds non-integer indices")
    return out


def load_ground_truth(path: str | Path) -> Ground:
    """Read gnd_roxford5k.pkl / gnd_rparis6k.pkl safely into a `Ground`; indices are checked against imlist."""
    path = Path(path)
    with open(path, "rb") as f:
        data = _GroundTruthUnpickler(f, path).load()
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= data.keys():
        raise ValueError(f"{path}: expected a dict with 'imlist', 'qimlist' and 'gnd'; "
                         "the file is not a revisitop ground truth (gnd_roxford5k.pkl / gnd_rparis6k.pkl)")
    imlist = [str(n) for n in data["imlist"]]
    qimlist = [str(n) for n in data["qimlist"]]
    if len(data["gnd"]) != len(qimlist):
        raise ValueError(f"{path}: {len(data['gnd'])} 'gnd' entries for {len(qimlist)} query images")
    queries = []
    for q, g in enumerate(data["gnd"]):
        if not isinstance(g, dict):
            raise ValueError(f"{path}: gnd[{q}] is a {type(g).__name__}, expected a dict; not a revisitop ground truth")
        missing = [k for k in ("bbx", "easy", "hard", "junk") if k not in g]
        if missing:
            raise ValueError(f"{path}: gnd[{q}] lacks {missing}; not a revisitop ground truth")
        bbx = np.asarray(g["bbx"], np.float64).reshape(-1)
        if bbx.shape != (4,):
            raise ValueError(f"{path}: gnd[{q}]['bbx'] has {bbx.size} values, expected x1, y1, x2, y2")
        labels = {k: _indices(g[k], path, q, k) for k in ("easy", "hard", "junk")}
        for key, idx in labels.items():
            if idx.size and (idx.min() < 0 or idx.max() >= len(imlist)):
                raise ValueError(f"{path}: gnd[{q}][{key!r}] has an index outside the {len(imlist)} "
                                 "database images")
        queries.append(QueryGround(bbx=bbx, **labels))
    return Ground(imlist, qimlist, queries)


def protocol_sets(gnd: Ground, protocol: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query (positives, junk) under a protocol, as revisitop's `example_evaluate.py` builds them.

    easy: positives easy, junk junk + hard; medium: positives easy + hard, junk junk;
    hard: positives hard, junk junk + easy.
    """
    if protocol == "easy":
        return [(q.easy, np.concatenate([q.junk, q.hard])) for q in gnd.queries]
    if protocol == "medium":
        return [(np.concatenate([q.easy, q.hard]), q.junk) for q in gnd.queries]
    if protocol == "hard":
        return [(q.hard, np.concatenate([q.junk, q.easy])) for q in gnd.queries]
    raise ValueError(f"unknown revisitop protocol {protocol!r}; expected one of {PROTOCOLS}")


def average_precision(ranks_of_positives: Sequence[int], num_positives: int) -> float:
    """revisitop's `compute_ap`: trapezoids of the precision-recall curve, one recall step per positive found.

    `ranks_of_positives` are the sorted 0-based positions of the retrieved positives once junk is removed;
    positives never retrieved add nothing, but `num_positives` counts them.
    """
    if num_positives <= 0:
        raise ValueError("average precision needs num_positives >= 1; a query without positives is left out")
    ranks = np.asarray(ranks_of_positives, np.float64)
    if ranks.size == 0:
        return 0.0
    j = np.arange(len(ranks), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision_0 = np.where(ranks == 0, 1.0, j / np.where(ranks == 0, 1.0, ranks))
    precision_1 = (j + 1) / (ranks + 1)
    return float(np.sum((precision_0 + precision_1) * (1.0 / num_positives) / 2.0))


def _positions(row: np.ndarray, ok: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based positions of the positives in `row` after the junk images before each are taken out."""
    pos = np.flatnonzero(np.isin(row, ok))
    junk_pos = np.flatnonzero(np.isin(row, junk))
    return pos - np.searchsorted(junk_pos, pos, side="left")  # junk strictly before a positive


@dataclass(frozen=True)
class ProtocolResult:
    """One protocol's scores. `map` and `mp` are fractions as compute_map returns them; `*_percent` are x100,
    as revisitop prints them. `aps`/`prs` are per query, NaN for a query without positives."""

    map: float
    mp: dict[int, float]
    aps: np.ndarray  # (Q,)
    prs: np.ndarray  # (Q, len(kappas))
    num_evaluated: int
    kappas: tuple[int, ...] = field(default=KAPPAS)

    @property
    def map_percent(self) -> float:
        return self.map * 100.0

    @property
    def mp_percent(self) -> dict[int, float]:
        return {k: v * 100.0 for k, v in self.mp.items()}


def compute_map(ranking: np.ndarray, sets: Sequence[tuple[np.ndarray, np.ndarray]],
                kappas: Sequence[int] = KAPPAS, strict: bool = True) -> ProtocolResult:
    """revisitop's `compute_map` for (positives, junk) per query; `ranking` is (Q,N), best first.

    A query without positives is left out of both means (NaN in aps/prs), as in the original. mP@k per query
    is the precision at min(k, position of its last retrieved positive), 1-based, as in the original. Where a
    query has positives but none is in its ranking, the original fails on max([]); here its AP and P@k are 0.
    No query with a positive at all is an error, or with `strict=False` NaN means (the per-query values are
    what a table pools over scenes).
    """
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or len(ranking) != len(sets):
        raise ValueError(f"ranking must be (Q,N) with one row per query ({len(sets)}), got shape {ranking.shape}")
    kappas = tuple(int(k) for k in kappas)
    aps = np.full(len(sets), np.nan)
    prs = np.full((len(sets), len(kappas)), np.nan)
    for q, (ok, junk) in enumerate(sets):
        if len(ok) == 0:
            continue
        pos = _positions(ranking[q], np.asarray(ok), np.asarray(junk))
        aps[q] = average_precision(pos, len(ok))
        pos1 = pos + 1
        for i, kappa in enumerate(kappas):
            kq = min(int(pos1.max()), kappa) if pos1.size else kappa
            prs[q, i] = np.count_nonzero(pos1 <= kq) / kq
    evaluated = ~np.isnan(aps)
    if not evaluated.any():
        if not strict:
            return ProtocolResult(map=float("nan"), mp={k: float("nan") for k in kappas}, aps=aps, prs=prs,
                                  num_evaluated=0, kappas=kappas)
        raise ValueError("no query has a positive under this protocol, so mAP is undefined; "
                         "the ground truth is empty or does not belong to this ranking")
    mp = prs[evaluated].sum(axis=0) / evaluated.sum()
    return ProtocolResult(map=float(aps[evaluated].sum() / evaluated.sum()),
                          mp={k: float(v) for k, v in zip(kappas, mp, strict=True)},
                          aps=aps, prs=prs, num_evaluated=int(evaluated.sum()), kappas=kappas)


def evaluate(ranking: np.ndarray, gnd: Ground, kappas: Sequence[int] = KAPPAS,
             strict: bool = True) -> dict[str, ProtocolResult]:
    """{'easy'|'medium'|'hard': ProtocolResult}; `ranking` (Q,N) holds every database index per query, best first.
    `strict`: as in compute_map."""
    ranking = np.asarray(ranking)
    if ranking.ndim != 2 or len(ranking) != len(gnd.queries):
        raise ValueError(f"ranking must be (Q,N) with Q = {len(gnd.queries)} queries of the ground truth, "
                         f"got shape {ranking.shape}")
    if ranking.shape[1] != len(gnd.imlist):
        raise ValueError(f"ranking holds {ranking.shape[1]} images per query but the database has "
                         f"{len(gnd.imlist)}: revisitop ranks the whole database (k = all images)")
    return {p: compute_map(ranking, protocol_sets(gnd, p), kappas, strict) for p in PROTOCOLS}
