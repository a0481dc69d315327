"""How well patch votes predict the overlap both ways round (vop.nso), the trained head against the backbone's
own patches, on the same pairs.

nso.csv scores every method on its own retrieved pairs, so the cls row and a vop row are measured on different
pairs (cls's are easier on the demo). This script puts the two embeddings side by side on one set of pairs, a
vop method's retrieved pairs, for three partner thresholds:

- `chance`: the pipeline's rule (vop.voting.chance_threshold at `nso_chance`), per embedding and scene;
- `fitted`: the threshold that minimises the RMSE on the training scenes' overlapping pairs (the head applied
  to their features), the best a calibration on training data could do;
- `best`: the one that minimises the RMSE on these pairs themselves (an upper bound, not a method).

It also splits the errors by the pairs' truth: no shared surface, a true relative scale of 2x or more, the
rest. The predictor is the pipeline's: a patch has a partner when its best cosine in the other image exceeds
the threshold; enclosure and concentration are the shares of such patches.

    PYTHONPATH=src .venv/bin/python benchmarks/nso_predictors.py --results results/demo \
        --train results/demo_train --encoder results/encoders/vop_sift/checkpoint.pt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from vop.conf import EncoderConf
from vop.encoder import apply_encoder
from vop.io import read_gt
from vop.nso import large_scale_change, nso_errors
from vop.utils import l2_normalize
from vop.voting import PatchStore, chance_threshold

THRESHOLDS = np.round(np.arange(0.50, 0.995, 0.01), 2)


def unit_patches(store: PatchStore) -> np.ndarray:
    """Every image's L2-normalised patches (num_images, M, D)."""
    return l2_normalize(store.read(np.arange(store.num_images)))


def best_cosines(patches: np.ndarray, q: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, each query patch's best cosine in d and each of d's patches' best cosine in the query."""
    sim = np.einsum("kpc,kqc->kpq", patches[q], patches[d])
    return sim.max(2), sim.max(1)


class Pairs:
    """Best cosines and true NSO of ordered pairs, pooled over scenes."""

    def __init__(self):
        self.parts: list[tuple] = []

    def add(self, patches, q, d, gt, chance_tau=np.nan, true_scale=None):
        rows, cols = best_cosines(patches, q, d)
        scale = np.full(len(q), np.nan) if true_scale is None else true_scale
        self.parts.append((rows, cols, gt.nso[q, d], gt.nso[d, q], np.full(len(q), chance_tau), scale))

    def column(self, k):
        return np.concatenate([p[k] for p in self.parts])

    def errors(self, tau, select=None):
        rows, cols = self.column(0), self.column(1)
        tau = np.broadcast_to(np.asarray(tau, np.float64), (len(rows),))[:, None]
        enc, con = (rows > tau).mean(1), (cols > tau).mean(1)
        keep = np.ones(len(enc), bool) if select is None else select
        return nso_errors(enc[keep], con[keep], self.column(2)[keep], self.column(3)[keep])

    def best_threshold(self) -> float:
        return float(min(THRESHOLDS, key=lambda t: self.errors(t)["rmse"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="results/{dataset} of the evaluation scenes")
    parser.add_argument("--train", type=Path, required=True, help="results/{dataset} of the training scenes")
    parser.add_argument("--encoder", type=Path, required=True, help="the trained head's checkpoint.pt")
    parser.add_argument("--method", default="vop", help="the vop method whose retrieved pairs are scored")
    parser.add_argument("--backbone", default="dense_sift")
    parser.add_argument("--nso-chance", type=float, default=0.1)
    args = parser.parse_args()

    features_name = f"features-{args.backbone}.h5"
    embeddings = {"head": None, "patches": None}
    with tempfile.TemporaryDirectory() as tmp:
        train = {kind: Pairs() for kind in embeddings}
        for scene in sorted(p.parent for p in args.train.glob(f"*/{features_name}")):
            gt = read_gt(scene / "gt.h5")
            overlap = np.maximum(gt.overlap, gt.overlap.T)
            q, d = np.nonzero(overlap > 0)
            q, d = q[q != d], d[q != d]
            head = Path(tmp) / f"{scene.name}.h5"
            apply_encoder(scene / features_name, head, EncoderConf(type="vop", backbone=args.backbone), args.encoder,
                          names=gt.names, device="cpu")
            for kind, path in (("head", head), ("patches", scene / features_name)):
                train[kind].add(unit_patches(PatchStore.from_h5(path, gt.names)), q, d, gt)
    fitted = {kind: train[kind].best_threshold() for kind in embeddings}

    test = {kind: Pairs() for kind in embeddings}
    for scene in sorted(p.parent.parent for p in args.results.glob(f"*/{args.method}/overlap.csv")):
        gt = read_gt(scene / "gt.h5")
        index = gt.index()
        table = pd.read_csv(scene / args.method / "overlap.csv", keep_default_na=False, na_values=[""])
        q = np.array([index[n] for n in table["query"]])
        d = np.array([index[n] for n in table["db"]])
        head = next(scene.glob("embeddings-vop*.h5"))
        for kind, path in (("head", head), ("patches", scene / features_name)):
            store = PatchStore.from_h5(path, gt.names)
            tau = chance_threshold(store, args.nso_chance)
            test[kind].add(unit_patches(store), q, d, gt, tau, table["true_relative_scale"].to_numpy())

    truth_scale = test["head"].column(5)
    no_overlap = ~np.isfinite(truth_scale)
    large = large_scale_change(truth_scale)
    splits = {"all": None, "no shared surface": no_overlap, "scale 2x+": large, "rest": ~no_overlap & ~large}
    print(f"{args.method}'s retrieved ordered pairs in {args.results}: {len(truth_scale)}; "
          + ", ".join(f"{k} {int(v.sum())}" for k, v in splits.items() if v is not None))
    print(f"{'embedding':<8} {'threshold':<8} {'tau':>6} " + " ".join(f"{k + ' RMSE/Acc':>26}" for k in splits))
    for kind in embeddings:
        for rule, tau in (("chance", test[kind].column(4)), ("fitted", fitted[kind]),
                          ("best", test[kind].best_threshold())):
            cells = []
            for select in splits.values():
                e = test[kind].errors(tau, select)
                cells.append(f"{e['rmse']:.3f} / {e['acc']:5.1f}%")
            shown = f"{np.mean(tau):.3f}"
            print(f"{kind:<8} {rule:<8} {shown:>6} " + " ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
