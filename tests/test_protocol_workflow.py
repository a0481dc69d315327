"""The other protocols end to end: revisitop and GL3D downloaded from a loopback server into their layouts,
and the offline fixtures of every protocol through retrieval to vpr.csv, revisitop.csv and gl3d.csv."""

import io as bytes_io
import math
import pickle
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml
from test_datasets_workflow import run_snakemake
from test_download import ArchiveServer
from test_protocol_sources import write_jpg
from test_workflow import REPO, job_counts, snakemake, write_config

from vop import io, reference
from vop.protocols import gl3d

pytestmark = pytest.mark.workflow

METHODS = ["vop", "cls", "oracle"]  # random: tests/test_protocol_tables.py and the demo
PROTOCOL_CONFIG = {
    "datasets": {
        "pvpr": {"source": "synthetic_vpr", "scenes": ["street_a"], "backbone": "dense_sift", "methods": METHODS,
                 "synthetic": {"seed": 3, "num_images": 30, "width": 160, "height": 120}},
        "prev": {"source": "synthetic_revisitop", "scenes": ["land_b", "land_d"], "backbone": "dense_sift",
                 "methods": METHODS, "synthetic": {"seed": 3, "num_images": 16, "width": 160, "height": 120}},
        "pgl3d": {"source": "synthetic_image_list", "scenes": ["coll_a"], "backbone": "dense_sift", "methods": METHODS,
                  "synthetic": {"seed": 3, "num_images": 16, "width": 160, "height": 120}},
    },
    "backbones": {"dense_sift": {"batch_size": 8}},
    "encoders": {"identity": {"type": "identity"}},
    "methods": {
        "vop": {"type": "vop", "encoder": "identity", "k": 3, "prefilter": 5, "radius": 0.2},
        "cls": {"type": "cls", "k": 3},
        "oracle": {"type": "oracle", "k": 3},
    },
}
TABLES = ["results/pvpr/vpr.csv", "results/prev/revisitop.csv", "results/pgl3d/gl3d.csv"]
PLOTS = ["results/pvpr/plots/vpr.png", "results/prev/plots/revisitop.png", "results/pgl3d/plots/gl3d.png"]


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("protocols")
    write_config(workdir, PROTOCOL_CONFIG)
    snakemake(workdir, *TABLES, *PLOTS)
    return workdir


def read_table(path):
    return pd.read_csv(path, dtype={"method": str, "scene": str})


def test_every_protocol_table_has_its_rows_and_the_oracle_at_the_ceiling(protocol_run):
    for path, scenes in zip(TABLES, (["street_a"], ["land_b", "land_d"], ["coll_a"]), strict=True):
        table = read_table(protocol_run / path)
        assert list(zip(table["method"], table["scene"])) == [(m, s) for m in METHODS for s in [*scenes, "ALL"]]
        values = table.drop(columns=["method", "scene"]).to_numpy(np.float64)
        assert all(math.isfinite(v) for v in values.ravel()), path
        metrics = table.drop(columns=["method", "scene", "num_queries"])
        metrics.index = table["method"] + "/" + table["scene"]
        # every query of the fixtures has a positive, so the oracle's ceiling is 100 everywhere
        assert (metrics.loc[[f"oracle/{s}" for s in [*scenes, "ALL"]]] == 100.0).all().all(), path
        assert (metrics.loc["cls/ALL"] <= metrics.loc["oracle/ALL"]).all()
    vpr = read_table(protocol_run / TABLES[0]).set_index(["method", "scene"])
    assert list(vpr.columns) == ["num_queries", "R@1", "R@5", "R@10", "R@20"] and (vpr["num_queries"] == 6).all()
    rev = read_table(protocol_run / TABLES[1]).set_index(["method", "scene"])
    assert rev.loc[("vop", "ALL"), "num_queries"] == 4 and "mP@10_H" in rev.columns
    gl = read_table(protocol_run / TABLES[2])
    assert list(gl.columns) == ["method", "scene", "num_queries", "mAP@200"]
    for path in PLOTS:
        assert (protocol_run / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lists_have_each_protocols_depth(protocol_run):
    res = protocol_run / "results"
    vpr_pairs = io.read_pairs(res / "pvpr/street_a/vop/pairs.txt")
    assert len(vpr_pairs) == 6 * 20
    assert all(q.startswith("queries/") and d.startswith("database/") for q, d in vpr_pairs)
    # revisitop: every query ranks the whole database, once each
    names = io.read_names(res / "prev/land_b/gt.h5")
    database = [n for n in names if not n.startswith("query/")]
    for method in METHODS:
        pairs = io.read_pairs(res / f"prev/land_b/{method}/pairs.txt")
        queries = sorted({q for q, _ in pairs})
        assert all(sorted(d for q2, d in pairs if q2 == q) == sorted(database) for q in queries), method
    # the deep vop lists are its reranked prefilter and then the prefilter order, checked the straightforward way
    for method_dir in (res / "prev/land_b/vop", res / "pgl3d/coll_a/vop"):
        equal, message = reference.check_method_dir(method_dir)
        assert equal, message


def test_match_pairs_are_mirrors_format(protocol_run):
    scene = protocol_run / "results/pgl3d/coll_a"
    names = io.read_names(scene / "gt.h5")
    assert names == (protocol_run / "resources/pgl3d/coll_a/image_list.txt").read_text().splitlines()
    for method in METHODS:
        rankings, scores = gl3d.read_match_pairs(scene / method / "match_pairs.txt", len(names))
        pairs = io.read_pairs(scene / method / "pairs.txt")
        for i, ranked in enumerate(rankings):
            assert ranked[0] == i and len(ranked) == len(names)  # self pair first, then every other image
            assert [names[j] for j in ranked[1:]] == [d for q, d in pairs if q == names[i]]
            head = [s for s in scores[i][1:] if math.isfinite(s)]
            assert scores[i][0] >= max([1.0, *head])


def test_protocol_rules_and_the_demo_target(protocol_run):
    out = snakemake(protocol_run, "-n", *TABLES, *PLOTS)
    assert "Nothing to be done" in out
    proc = run_snakemake(protocol_run, "-n", "results/pvpr/revisitop.csv")
    assert proc.returncode != 0 and "is scored by the vpr protocol: its table is results/pvpr/vpr.csv" in \
        proc.stdout + proc.stderr
    # the repository's config: `demo` makes every demo table and figure, pose and protocol ones
    fresh = protocol_run.parent / "repo_config"
    write_config(fresh, yaml.safe_load((REPO / "config/config.yaml").read_text()))
    proc = run_snakemake(fresh, "-n", "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["protocol_table"] == 3 and counts["protocol_plot"] == 3 and counts["auc_table"] == 1
    assert counts["match_pairs"] == 4 and "download_archive" not in counts  # the repository's 4 methods


# ---------------------------------------------------------------------------------------------------
# Downloads


def tgz(files: dict[str, bytes]) -> bytes:
    buf = bytes_io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, bytes_io.BytesIO(data))
    return buf.getvalue()


def jpg_bytes(tmp_path, value):
    path = tmp_path / f"v{value}.jpg"
    write_jpg(path, 64, 48, value)
    return path.read_bytes()


def gnd(db, queries):
    return pickle.dumps({"imlist": db, "qimlist": queries,
                         "gnd": [{"bbx": [4, 4, 60, 44], "easy": [0], "hard": [1], "junk": []} for _ in queries]})


def test_revisitop_and_gl3d_download_into_their_layouts(tmp_path):
    with ArchiveServer() as server:
        # Oxford: one archive, Paris: two archives with sub-folders, flattened into one jpg/ (revisitop's script)
        server.files["rev/oxbuild_images-v1.tgz"] = tgz({f"ox_{k}.jpg": jpg_bytes(tmp_path, 10 * k) for k in range(3)})
        server.files["rev/paris_1-v1.tgz"] = tgz({"paris/defense/p_0.jpg": jpg_bytes(tmp_path, 1),
                                                  "paris/defense/p_1.jpg": jpg_bytes(tmp_path, 2)})
        server.files["rev/paris_2-v1.tgz"] = tgz({"paris/eiffel/p_2.jpg": jpg_bytes(tmp_path, 3)})
        server.files["rev/gnd_roxford5k.pkl"] = gnd(["ox_0", "ox_1"], ["ox_2"])
        server.files["rev/gnd_rparis6k.pkl"] = gnd(["p_0", "p_2"], ["p_1"])
        server.cut["rev/gnd_rparis6k.pkl"], server.cut_times["rev/gnd_rparis6k.pkl"] = 40, 1  # one dropped transfer
        # GL3D: eval_data.zip and MIRorR's two lists
        names = [f"eval_data/58ab/retrieval_eval/DJI_000{k}.JPG" for k in range(3)]
        buf = bytes_io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for k, name in enumerate(names):
                zf.writestr(name, jpg_bytes(tmp_path, 50 + k))
        server.files["gl3d/eval_data.zip"] = buf.getvalue()
        server.files["gl3d/eval_img_list.txt"] = ("\n".join(names) + "\n").encode()
        server.files["gl3d/gl3d_gt_pairs"] = b"0 1\n1 0\n2 0\n"
        config = {
            "datasets": {
                "rev": {"source": "revisitop", "url": f"{server.url}/rev", "backbone": "dense_sift",
                        "methods": ["cls"]},
                "g": {"source": "gl3d", "url": f"{server.url}/gl3d/", "backbone": "dense_sift", "methods": ["cls"]},
            },
            "backbones": {"dense_sift": {}}, "encoders": {"identity": {"type": "identity"}},
            "methods": {"cls": {"type": "cls", "k": 2}},
        }
        work = tmp_path / "work"
        (work / "config").mkdir(parents=True)
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        proc = run_snakemake(work, "results/rev/roxford5k/gt.h5", "results/rev/rparis6k/gt.h5", "results/g/g/gt.h5")
        requests = [r for r in server.requests if r["path"] == "rev/gnd_rparis6k.pkl"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert [r["range"] for r in requests] == [None, "bytes=40-"]  # resumed
    res = work / "resources"
    assert sorted(p.name for p in (res / "rev/rparis6k/jpg").iterdir()) == ["p_0.jpg", "p_1.jpg", "p_2.jpg"]
    assert (res / "rev/roxford5k/gnd_roxford5k.pkl").read_bytes() == gnd(["ox_0", "ox_1"], ["ox_2"])
    paris = io.read_gt(work / "results/rev/rparis6k/gt.h5")
    assert paris.names == ["p_0.jpg", "p_2.jpg", "query/p_1.jpg"] and paris.views["query/p_1.jpg"][0] == "p_1.jpg"
    assert paris.image_size[2].tolist() == [56, 40]  # the query is its bbx
    g = io.read_gt(work / "results/g/g/gt.h5")
    assert g.names == names and (res / "g/eval_data/58ab/retrieval_eval/DJI_0001.JPG").is_file()
    assert list(zip(g.relevance.query.tolist(), g.relevance.db.tolist())) == [(0, 1), (1, 0), (2, 0)]
    log = (work / "logs/rev/download_gnd_rparis6k.pkl.log").read_text()
    assert "connection lost" in log and "resuming at" in log
