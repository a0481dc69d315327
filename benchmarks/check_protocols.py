"""Agreement of vop.protocols with the original benchmark code, on seeded random rankings and ground truths.

    PYTHONPATH=src python benchmarks/check_protocols.py --revisitop REVISITOP --mirror MIRROR --geowarp GEOWARP

Each argument is a checkout of the original repository (filipradenovic/revisitop, hlzz/mirror = MIRorR,
gmberton/geo_warp); their functions are imported from there, never copied. Their code is made importable
here by shims set at import time: Python 2's `xrange` (MIRorR), numpy aliases removed since (`np.in1d`,
`np.float`), and a stand-in for torchvision, which GeoWarp's dataset module imports but does not use here.
GeoWarp's positives need scikit-learn (NearestNeighbors); without it that line is skipped (it can live
outside the project's environment: `pip install --target DIR scikit-learn` and put DIR on PYTHONPATH).
Only the Python files of each checkout are read; their data files (e.g. MIRorR's gl3d_gt_pairs) are not needed.

Prints, per metric, the largest absolute difference between ours and theirs; exits 1 if one exceeds 1e-9.
With `--results DIR` (a working directory after `snakemake demo`) it also recomputes every cell of the
pipeline's vpr.csv, revisitop.csv and gl3d.csv with the original code from the same run's files (the
tables round to 4 decimals, so theirs is rounded the same way before the comparison).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib.util
import io
import pickle
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from vop.datasets.vpr import VprOptions
from vop.protocols import gl3d, revisitop, vpr

TOLERANCE = 1e-9


def load_module(name: str, path: Path) -> types.ModuleType:
    """Import a file of an original checkout under a name of our own (theirs clash: `util`, `evaluate`)."""
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass the root of a checkout of the original repository")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def install_shims() -> None:
    """What the originals need from an older Python/numpy, or from packages they import but we do not use."""
    builtins.xrange = range  # MIRorR is Python 2
    if not hasattr(np, "in1d"):
        np.in1d = lambda a, b: np.isin(np.asarray(a).ravel(), b)  # revisitop, GeoWarp (removed in numpy 2.4)
    if not hasattr(np, "float"):
        np.float = float  # GeoWarp's dataset_geoloc (removed in numpy 1.24)
    if importlib.util.find_spec("torchvision") is None:  # GeoWarp's datasets_util builds a transform at import
        tv = types.ModuleType("torchvision")
        tv.transforms = types.SimpleNamespace(Compose=lambda ts: None, ToTensor=lambda: None,
                                              Normalize=lambda **kw: None)
        sys.modules["torchvision"] = tv
    for name in ("faiss", "tqdm"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.tqdm = lambda x, **kw: x
            sys.modules[name] = stub


def maxdiff(ours, theirs) -> float:
    """max |ours - theirs|, NaN equal to NaN and NaN against a number infinite."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape:
        return float("inf")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return float("inf")
    return float(np.max(np.abs(a[~nan_a] - b[~nan_b]), initial=0.0))


# ---------------------------------------------------------------------------------------------------


def check_vpr(root: Path, rng: np.random.Generator, tmp: Path) -> dict[str, float]:
    util = load_module("geowarp_util", root / "util.py")
    out = {}
    # recall@N: random predictions, some queries without positives
    num_q, num_db = 500, 300
    predictions = np.stack([rng.choice(num_db, 20, replace=False) for _ in range(num_q)])
    truths = [np.sort(rng.choice(num_db, rng.integers(1, 8), replace=False)) if rng.random() > 0.3
              else np.zeros(0, np.int64) for _ in range(num_q)]
    theirs, _ = util.compute_recalls(predictions, truths, types.SimpleNamespace(queries_num=num_q), [1, 5, 10, 20])
    ours = vpr.recall_at_n(predictions, truths, (1, 5, 10, 20))
    out["vpr recall@1/5/10/20"] = maxdiff([ours[n] for n in (1, 5, 10, 20)], theirs)

    # positives and UTM parsing: GeoWarp's dataset reads the same file names
    if importlib.util.find_spec("sklearn") is None:
        print("vpr positives: skipped (GeoWarp's dataset needs scikit-learn)")
        return out
    sys.path.insert(0, str(root))  # dataset_geoloc imports datasets_util
    dataset_geoloc = load_module("geowarp_dataset_geoloc", root / "dataset_geoloc.py")
    split = tmp / "vpr" / "toy" / "images" / "test"
    base = np.array([543000.0, 4178000.0])
    db_utm = base + np.round(rng.uniform(0, 300, (400, 2)), 2)
    q_utm = base + np.round(rng.uniform(0, 300, (200, 2)), 2)
    q_utm[:20] = db_utm[:20] + [15.0, 20.0]  # 25 m away, up to rounding
    q_utm[20:40] = db_utm[20:40]
    for folder, utms in (("gallery", db_utm), ("queries", q_utm)):
        (split / folder).mkdir(parents=True)
        for i, (e, n) in enumerate(utms):
            (split / folder / f"@{e:.2f}@{n:.2f}@10@S@037.75@-122.50@{folder}{i:04d}@@@@@@@@.jpg").touch()
    ds = dataset_geoloc.GeolocDataset(str(tmp / "vpr"), "toy", "test", positive_dist_threshold=25)
    ours_db = np.array([vpr.parse_utm(p) for p in ds.gallery_paths])
    ours_q = np.array([vpr.parse_utm(p) for p in ds.queries_paths])
    out["vpr utm parse"] = max(maxdiff(ours_db, ds.gallery_utms), maxdiff(ours_q, ds.queries_utms))
    ours_pos = vpr.positives(ours_db, ours_q, 25.0)
    theirs_pos = ds.get_positives()  # sklearn radius_neighbors, in no particular order
    differ = sum(set(a.tolist()) != set(np.asarray(b).tolist()) for a, b in zip(ours_pos, theirs_pos, strict=True))
    out["vpr positives (queries differing)"] = float(differ)
    return out


# ---------------------------------------------------------------------------------------------------


def random_gnd(rng: np.random.Generator, num_db: int, num_q: int) -> dict:
    gnd = []
    for q in range(num_q):
        perm = rng.permutation(num_db)
        sizes = rng.integers(0, 12, 3)
        if q % 7 == 0:
            sizes[0] = 0  # no easy: Easy protocol skips it
        if q % 5 == 0:
            sizes[1] = 0  # no hard: Hard protocol skips it
        if q % 11 == 0:
            sizes[:2] = 0  # no positive at all
        a, b = sizes[0], sizes[0] + sizes[1]
        gnd.append({"bbx": rng.uniform(0, 500, 4).tolist(), "easy": perm[:a].tolist(),
                    "hard": perm[a:b].tolist(), "junk": perm[b:b + sizes[2]].tolist()})
    return {"imlist": [f"db{i}" for i in range(num_db)], "qimlist": [f"q{i}" for i in range(num_q)], "gnd": gnd}


def check_revisitop(root: Path, rng: np.random.Generator, tmp: Path) -> dict[str, float]:
    evaluate = load_module("revisitop_evaluate", root / "python" / "evaluate.py")
    dataset = load_module("revisitop_dataset", root / "python" / "dataset.py")
    out = {}
    ranks = [np.sort(rng.choice(400, rng.integers(1, 30), replace=False)) for _ in range(300)]
    nres = [len(r) + int(rng.integers(0, 5)) for r in ranks]
    out["revisitop compute_ap"] = maxdiff([revisitop.average_precision(r, n) for r, n in zip(ranks, nres, strict=True)],
                                          [evaluate.compute_ap(r, n) for r, n in zip(ranks, nres, strict=True)])

    num_db, num_q, kappas = 200, 40, [1, 5, 10]
    (tmp / "roxford5k").mkdir()
    pkl = tmp / "roxford5k" / "gnd_roxford5k.pkl"
    pkl.write_bytes(pickle.dumps(random_gnd(rng, num_db, num_q)))
    theirs_gnd = dataset.configdataset("roxford5k", str(tmp))["gnd"]  # their loader: plain pickle.load
    ours_gnd = revisitop.load_ground_truth(pkl)
    ranking = np.stack([rng.permutation(num_db) for _ in range(num_q)])  # (Q, N); theirs is (N, Q)
    ours = revisitop.evaluate(ranking, ours_gnd, kappas)
    # their example_evaluate.py's protocol sets, built from their loaded ground truth
    recipes = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
               "hard": (("hard",), ("junk", "easy"))}
    for name, (ok_keys, junk_keys) in recipes.items():
        gnd_t = [{"ok": np.concatenate([g[k] for k in ok_keys]), "junk": np.concatenate([g[k] for k in junk_keys])}
                 for g in theirs_gnd]
        mean_ap, aps, mpr, prs = evaluate.compute_map(ranking.T, gnd_t, kappas)
        res = ours[name]
        out[f"revisitop {name} mAP"] = maxdiff(res.map, mean_ap)
        out[f"revisitop {name} mP@1/5/10"] = maxdiff([res.mp[k] for k in kappas], mpr)
        out[f"revisitop {name} per-query AP, P@k"] = max(maxdiff(res.aps, aps), maxdiff(res.prs, prs))

    # short rankings (compute_map level): every query with positives keeps one of them in its list
    sets = revisitop.protocol_sets(ours_gnd, "medium")
    width = 25
    short = ranking[:, :width].copy()
    for q, (ok, _) in enumerate(sets):
        if len(ok) and not np.isin(short[q], ok).any():
            short[q, -1] = ok[0]  # their P@k fails on a query whose positives are all missing
    res = revisitop.compute_map(short, sets, kappas)
    mean_ap, aps, mpr, _ = evaluate.compute_map(short.T, [{"ok": ok, "junk": junk} for ok, junk in sets], kappas)
    out["revisitop short lists mAP, mP@k"] = max(maxdiff(res.map, mean_ap), maxdiff(list(res.mp.values()), mpr),
                                                 maxdiff(res.aps, aps))
    return out


# ---------------------------------------------------------------------------------------------------


def check_gl3d(root: Path, rng: np.random.Generator, tmp: Path) -> dict[str, float]:
    sys.path.insert(0, str(root))  # their `from tools.common import read_list`
    bench = load_module("mirror_compute_overlap_benchmark", root / "retrieval" / "compute_overlap_benchmark.py")
    out = {}
    n = 300
    image_list = tmp / "eval_img_list.txt"
    image_list.write_text("".join(f"scene/{i:04d}.JPG\n" for i in range(n)))
    gt_path = tmp / "gl3d_gt_pairs"
    lines = []
    for i in range(n):
        if rng.random() < 0.2:
            continue  # no partners: skipped by both
        partners = rng.choice(n, rng.integers(1, 15), replace=False)  # may hold i: an `i i` line, skipped
        lines += [f"{i} {j}" for j in partners]
        if rng.random() < 0.1:
            lines.append(f"{i} {partners[0]}")  # a repeated line: MIRorR counts it again in |gt|
    rng.shuffle(lines)
    gt_path.write_text("\n".join(lines) + "\n")
    gt = gl3d.read_gt_pairs(gt_path, n)

    def theirs(match_pairs: Path) -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            return bench.compute_GL3D_map(str(image_list), str(match_pairs), str(gt_path))

    def lists(with_self: bool) -> list[list[int]]:
        out = []
        for i in range(n):
            row = [int(j) for j in rng.choice(n, rng.integers(0, 60), replace=False) if j != i]
            if with_self and rng.random() < 0.5:
                row.insert(int(rng.integers(0, len(row) + 1)), i)  # the query itself, anywhere
            out.append(row)
        return out

    # per-query AP, with repeated entries in the list
    aps_ours, aps_theirs = [], []
    for i in range(n):
        if gt[i]:
            row = list(rng.choice(n, rng.integers(0, 40)))
            aps_ours.append(gl3d.overlap_ap(row, gt[i]))
            aps_theirs.append(bench.compute_overlap_ap(list(gt[i]), row, i))
    out["gl3d compute_overlap_ap"] = maxdiff(aps_ours, aps_theirs)

    # 1. our writer: self pair first, then the ranking without it
    rankings = lists(with_self=False)
    scores = [sorted(rng.uniform(0, 1, len(r)), reverse=True) for r in rankings]
    path = tmp / "match_pairs_ours"
    gl3d.write_match_pairs(path, rankings, scores)
    read, _ = gl3d.read_match_pairs(path, n)
    out["gl3d mAP, write_match_pairs file"] = maxdiff(gl3d.map_at_k(read, gt, k=10**9), theirs(path))

    # 2. self pairs anywhere in the list (or absent), file in MIRorR's own layout (no trailing newline)
    raw = lists(with_self=True)
    path = tmp / "match_pairs_raw"
    path.write_text("\n".join(f"{i} {j} 0.5" for i, row in enumerate(raw) for j in row))
    read, _ = gl3d.read_match_pairs(path, n)
    out["gl3d mAP, self pairs anywhere"] = maxdiff(gl3d.map_at_k(read, gt, k=10**9), theirs(path))

    # 3. k counts file entries, self included: ours on full lists with k vs theirs on the file cut to k
    for k in (1, 10, 25):
        path = tmp / f"match_pairs_top{k}"
        path.write_text("\n".join(f"{i} {j} 0.5" for i, row in enumerate(raw) for j in row[:k]))
        out[f"gl3d mAP@{k}, cut lists"] = maxdiff(gl3d.map_at_k(raw, gt, k=k), theirs(path))
    return out


# ---------------------------------------------------------------------------------------------------
# The pipeline's own tables against the originals run on the same files


def _table_rows(path: Path) -> dict[tuple[str, str], dict]:
    import pandas as pd

    table = pd.read_csv(path, dtype={"method": str, "scene": str})
    return {(r["method"], r["scene"]): r for r in table.to_dict("records") if r["scene"] != "ALL"}


def _method_pairs(workdir: Path, dataset: str, scene: str, method: str) -> dict[str, list[str]]:
    from vop.io import read_pairs
    from vop.metrics import retrieved_per_query

    return retrieved_per_query(read_pairs(workdir / "results" / dataset / scene / method / "pairs.txt"))


def check_results(workdir: Path, revisitop_root: Path, mirror_root: Path, geowarp_root: Path, tmp: Path) -> dict:
    """Every vpr.csv, revisitop.csv and gl3d.csv of generated datasets under workdir/results (e.g. after
    `snakemake demo`), each (method, scene) cell recomputed by the original code from the run's files."""
    out: dict[str, float] = {}
    for table in sorted((workdir / "results").glob("*/vpr.csv")):
        dataset = table.parent.name
        util = load_module("geowarp_util", geowarp_root / "util.py")
        if importlib.util.find_spec("sklearn") is None:
            print(f"{table}: skipped (GeoWarp's dataset needs scikit-learn)")
            continue
        sys.path.insert(0, str(geowarp_root))
        dataset_geoloc = load_module("geowarp_dataset_geoloc", geowarp_root / "dataset_geoloc.py")
        for (method, scene), row in _table_rows(table).items():
            split = workdir / "resources" / dataset / scene / "images" / "test"
            view = tmp / dataset / scene / "images" / "test"  # GeoWarp's folder names: gallery/, queries/
            if not view.exists():
                view.mkdir(parents=True)
                (view / "gallery").symlink_to((split / "database").resolve())
                (view / "queries").symlink_to((split / "queries").resolve())
            ds = dataset_geoloc.GeolocDataset(str(tmp / dataset), scene, "test",
                                              positive_dist_threshold=_dataset_entry(workdir, dataset).get(
                                                  "positive_dist_m", VprOptions.positive_dist_m))
            gallery = [f"database/{Path(p).relative_to(view / 'gallery').as_posix()}" for p in ds.gallery_paths]
            index = {n: i for i, n in enumerate(gallery)}
            pairs = _method_pairs(workdir, dataset, scene, method)
            queries = [f"queries/{Path(p).relative_to(view / 'queries').as_posix()}" for p in ds.queries_paths]
            predictions = np.array([[index[d] for d in pairs[q][:20]] for q in queries])
            theirs, _ = util.compute_recalls(predictions, ds.get_positives(), ds, [1, 5, 10, 20])
            ours = [row[f"R@{n}"] for n in (1, 5, 10, 20)]
            out[f"{dataset}/{scene}/{method} R@1/5/10/20"] = maxdiff(np.round(theirs, 4), ours)
    for table in sorted((workdir / "results").glob("*/revisitop.csv")):
        dataset = table.parent.name
        evaluate = load_module("revisitop_evaluate", revisitop_root / "python" / "evaluate.py")
        for (method, scene), row in _table_rows(table).items():
            with open(workdir / "resources" / dataset / scene / f"gnd_{scene}.pkl", "rb") as f:
                cfg = pickle.load(f)  # as their configdataset reads it
            index = {f"{n}.jpg": i for i, n in enumerate(cfg["imlist"])}
            pairs = _method_pairs(workdir, dataset, scene, method)
            ranks = np.array([[index[d] for d in pairs[f"query/{q}.jpg"]] for q in cfg["qimlist"]]).T  # (N, Q)
            recipes = {"E": (("easy",), ("junk", "hard")), "M": (("easy", "hard"), ("junk",)),
                       "H": (("hard",), ("junk", "easy"))}
            for name, (ok_keys, junk_keys) in recipes.items():
                gnd_t = [{"ok": np.concatenate([g[k] for k in ok_keys]),
                          "junk": np.concatenate([g[k] for k in junk_keys])} for g in cfg["gnd"]]
                ours = [row[f"mAP_{name}"], *(row[f"mP@{k}_{name}"] for k in (1, 5, 10))]
                try:
                    mean_ap, _, mpr, _ = evaluate.compute_map(ranks, gnd_t, [1, 5, 10])
                    theirs = np.round(np.r_[mean_ap, mpr] * 100, 4)
                except ZeroDivisionError:  # no query has a positive under this protocol: our cells are empty
                    theirs = np.full(4, np.nan)
                out[f"{dataset}/{scene}/{method} mAP, mP@1/5/10 {name}"] = maxdiff(theirs, ours)
    for table in sorted((workdir / "results").glob("*/gl3d.csv")):
        dataset = table.parent.name
        sys.path.insert(0, str(mirror_root))
        bench = load_module("mirror_compute_overlap_benchmark",
                            mirror_root / "retrieval" / "compute_overlap_benchmark.py")
        column = next(c for c in _first(table) if c.startswith("mAP@"))
        for (method, scene), row in _table_rows(table).items():
            folder = workdir / "resources" / dataset / scene
            with contextlib.redirect_stdout(io.StringIO()):
                theirs = bench.compute_GL3D_map(str(folder / "image_list.txt"),
                                                str(workdir / "results" / dataset / scene / method / "match_pairs.txt"),
                                                str(folder / "gt_pairs.txt"))
            out[f"{dataset}/{scene}/{method} {column}"] = maxdiff(round(theirs * 100, 4), row[column])
    if not out:
        raise SystemExit(f"{workdir}/results holds no vpr.csv, revisitop.csv or gl3d.csv: run `snakemake demo` first")
    return out


def _dataset_entry(workdir: Path, dataset: str) -> dict:
    import yaml

    return yaml.safe_load((workdir / "config" / "config.yaml").read_text())["datasets"][dataset]


def _first(table: Path) -> list[str]:
    return table.read_text().splitlines()[0].split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revisitop", type=Path, required=True, help="checkout of filipradenovic/revisitop")
    parser.add_argument("--mirror", type=Path, required=True, help="checkout of hlzz/mirror (MIRorR)")
    parser.add_argument("--geowarp", type=Path, required=True, help="checkout of gmberton/geo_warp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path,
                        help="also a working directory after `snakemake demo`: its protocol tables, cell by cell, "
                             "against the originals run on the same pairs.txt / match_pairs.txt and ground truth")
    args = parser.parse_args()
    install_shims()
    rng = np.random.default_rng(args.seed)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, check, root in (("vpr", check_vpr, args.geowarp), ("revisitop", check_revisitop, args.revisitop),
                                  ("gl3d", check_gl3d, args.mirror)):
            (tmp / name).mkdir()
            results.update(check(root.resolve(), rng, tmp / name))
        if args.results:
            (tmp / "results").mkdir()
            results.update(check_results(args.results.resolve(), args.revisitop.resolve(), args.mirror.resolve(),
                                         args.geowarp.resolve(), tmp / "results"))
    width = max(map(len, results))
    for name, diff in results.items():
        print(f"{name:<{width}}  max |ours - theirs| = {diff:.3g}")
    worst = max(results.values())
    print(f"worst: {worst:.3g} ({'ok' if worst <= TOLERANCE else 'FAIL'}, tolerance {TOLERANCE:g})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
