"""The readers of the other protocols' layouts (vpr, revisitop, image_list, gl3d), their offline fixtures
and their config checks."""

import pickle
import zlib

import cv2
import numpy as np
import pytest
import yaml
from test_conf import REPO

from vop import io
from vop.conf import ConfigError, SyntheticConf
from vop.datasets import colmap, open_scene, synthetic, synthetic_protocols
from vop.datasets.revisitop import pil_box
from vop.features import _load
from vop.geometry import covisibility_overlap
from vop.protocols import revisitop, vpr
from vop.workflow import load_datasets


def write_jpg(path, w=64, h=48, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((h, w, 3), value, np.uint8)
    image[: h // 2, : w // 2] = 255 - value  # a corner that tells crops apart
    cv2.imwrite(str(path), image)


# ---------------------------------------------------------------------------------------------------
# VPR


def vpr_split(root, database="database"):
    split = root / "images" / "test"
    db = [(0.0, 0.0), (10.0, 0.0), (40.0, 0.0), (0.0, 24.0)]
    for k, (e, n) in enumerate(db):
        write_jpg(split / database / "sub" / f"@{500000 + e:.2f}@{4000000 + n:.2f}@17@T@@@db{k}@@.jpg")
    write_jpg(split / database / "notes.png")  # not a .jpg: GeoWarp's glob skips it
    for k, (e, n) in enumerate([(3.0, 4.0), (100.0, 0.0)]):
        write_jpg(split / "queries" / f"@{500000 + e:.2f}@{4000000 + n:.2f}@17@T@@@q{k}@@.jpg")
    return split


@pytest.mark.parametrize("database", ["database", "gallery"])
def test_vpr_reader_names_positions_and_positives(tmp_path, database):
    vpr_split(tmp_path, database)
    gt = open_scene("vpr", tmp_path, positive_dist_m=25).ground_truth()
    # the database first, then the queries, each sorted by path (the positions are in the names)
    assert [n.split("@")[-3] for n in gt.names] == ["db0", "db3", "db1", "db2", "q0", "q1"]
    assert gt.names[0] == f"{database}/sub/@500000.00@4000000.00@17@T@@@db0@@.jpg"
    assert gt.names[4].startswith("queries/@500003.00@4000004.00@")
    assert gt.overlap is None and np.isnan(gt.K).all() and gt.image_size.tolist()[0] == [64, 48]
    # query 0 at (3, 4): db0 5 m, db3 20.2 m, db1 8.06 m away; db2 37.1 m is not a positive; query 1 has none
    r = gt.relevance
    assert r.query.tolist() == [4, 4, 4] and r.db.tolist() == [0, 1, 2]
    np.testing.assert_allclose(r.grade, 1 / (1 + np.array([5.0, np.hypot(3, 20), np.hypot(7, 4)])), rtol=1e-6)
    narrow = open_scene("vpr", tmp_path, positive_dist_m=6).ground_truth().relevance
    assert narrow.db.tolist() == [0]


def test_vpr_reader_errors_name_the_file_and_the_fix(tmp_path):
    split = vpr_split(tmp_path)
    (split / "gallery").mkdir()
    with pytest.raises(FileNotFoundError, match="both of database/ and gallery/"):
        open_scene("vpr", tmp_path).ground_truth()
    (split / "gallery").rmdir()
    with pytest.raises(FileNotFoundError, match=r"images/val: neither of database/ and gallery/"):
        open_scene("vpr", tmp_path, split="val").ground_truth()
    write_jpg(split / "queries" / "IMG_0001.jpg")
    with pytest.raises(ValueError, match=r"'/.*queries/IMG_0001\.jpg' has no UTM position: expected @UTM_east"):
        open_scene("vpr", tmp_path).ground_truth()


# ---------------------------------------------------------------------------------------------------
# revisitop


def revisitop_layout(root, scene="roxford5k"):
    folder = root / scene
    for k in range(5):
        write_jpg(folder / "jpg" / f"im{k}.jpg", 80, 60, 40 * k)
    write_jpg(folder / "jpg" / "q0.jpg", 80, 60, 10)
    write_jpg(folder / "jpg" / "q1.jpg", 80, 60, 20)
    data = {"imlist": [f"im{k}" for k in range(5)], "qimlist": ["q0", "q1"],
            "gnd": [{"bbx": [10.4, 5.5, 70.6, 50.2], "easy": [0, 2], "hard": [3], "junk": [1, 2]},
                    {"bbx": [-5.0, 0.0, 90.0, 60.0], "easy": np.array([4]), "hard": [], "junk": []}]}
    (folder / f"gnd_{scene}.pkl").write_bytes(pickle.dumps(data, protocol=2))
    return folder


def test_revisitop_reader_crops_queries_and_grades_labels(tmp_path):
    folder = revisitop_layout(tmp_path)
    scene = open_scene("revisitop", tmp_path, "roxford5k")
    gt = scene.ground_truth()
    assert gt.names == [f"im{k}.jpg" for k in range(5)] + ["query/q0.jpg", "query/q1.jpg"]
    # PIL rounds the box (round half to even: 5.5 -> 6) and we keep it inside the image
    assert gt.views["query/q0.jpg"][0] == "q0.jpg"
    assert gt.views["query/q0.jpg"][1].tolist() == [10, 6, 71, 50]
    assert gt.views["query/q1.jpg"][1].tolist() == [0, 0, 80, 60]
    assert gt.image_size[5].tolist() == [61, 44] and gt.image_size[0].tolist() == [80, 60]
    # easy 3 beats junk 1 where an image carries both (im2); the oracle's order easy, hard, junk
    rel = sorted(zip(gt.relevance.query.tolist(), gt.relevance.db.tolist(), gt.relevance.grade.tolist()))
    assert rel == [(5, 0, 3.0), (5, 1, 1.0), (5, 2, 3.0), (5, 3, 2.0), (6, 4, 3.0)]
    # gt.h5 round trip keeps views and relevance; the features stage sees the crop
    io.write_gt(tmp_path / "gt.h5", gt)
    back = io.read_gt(tmp_path / "gt.h5")
    assert back.views.keys() == gt.views.keys() and back.relevance.db.tolist() == gt.relevance.db.tolist()
    image, size = _load(scene.image_dir, "query/q0.jpg", 32, back.views["query/q0.jpg"])
    assert size.tolist() == [61, 44] and image.shape == (32, 32, 3)
    full = cv2.cvtColor(cv2.imread(str(folder / "jpg" / "q0.jpg")), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(full[6:50, 10:71], (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(image, expected)


def test_revisitop_reader_errors(tmp_path):
    folder = revisitop_layout(tmp_path)
    (folder / "jpg" / "im3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"jpg/im3\.jpg: image listed in .*gnd_roxford5k\.pkl is missing"):
        open_scene("revisitop", tmp_path, "roxford5k").ground_truth()
    with pytest.raises(FileNotFoundError, match="rparis6k/gnd_rparis6k.pkl and rparis6k/jpg/"):
        open_scene("revisitop", tmp_path, "rparis6k").ground_truth()
    assert pil_box([1.5, 2.5, 3.5, 100], 50, 40).tolist() == [2, 2, 4, 40]


# ---------------------------------------------------------------------------------------------------
# image list, GL3D


def test_image_list_reader_keeps_the_list_order(tmp_path):
    for name in ("b/2.jpg", "a/1.jpg", "c.jpg"):
        write_jpg(tmp_path / "root" / name)
    write_jpg(tmp_path / "elsewhere" / "abs.jpg")
    absolute = str(tmp_path / "elsewhere" / "abs.jpg")
    (tmp_path / "root" / "list.txt").write_text(f"b/2.jpg\na/1.jpg\n{absolute}\nc.jpg\n\n")
    (tmp_path / "root" / "pairs.txt").write_text("0 1\n1 0\n0 3\n2 2\n0 1\n")
    scene = open_scene("image_list", tmp_path / "root", image_list="list.txt", gt_pairs="pairs.txt")
    gt = scene.ground_truth()
    assert gt.names == ["b/2.jpg", "a/1.jpg", absolute, "c.jpg"]  # line numbers are the indices
    assert list(zip(gt.relevance.query.tolist(), gt.relevance.db.tolist())) == [(0, 1), (0, 3), (1, 0)]
    assert scene.partners(4) == [[1, 3, 1], [0], [], []]
    io.write_gt(tmp_path / "gt.h5", gt)
    assert io.read_names(tmp_path / "gt.h5") == gt.names  # absolute names survive the h5 keys
    assert open_scene("image_list", tmp_path / "root", image_list="list.txt").ground_truth().relevance is None


@pytest.mark.parametrize("lines, error", [
    ("a.jpg\n../up.jpg\n", r"list\.txt:2: '\.\./up\.jpg' goes up"),
    ("a.jpg\nb.jpg\na.jpg\n", r"list\.txt:3: 'a\.jpg' is listed again \(first on line 1\)"),
    ("a.jpg\nmissing.jpg\n", r"missing\.jpg: listed in .*list\.txt but not found"),
    ("a.jpg\nmy photo.jpg\n", r"list\.txt: image name 'my photo\.jpg' holds white space .*pairs\.txt"),
])
def test_image_list_reader_refuses_bad_lists(tmp_path, lines, error):
    write_jpg(tmp_path / "a.jpg")
    write_jpg(tmp_path / "b.jpg")
    (tmp_path / "list.txt").write_text(lines)
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        open_scene("image_list", tmp_path, image_list="list.txt").ground_truth()


def test_gl3d_reader_reads_the_released_layout(tmp_path):
    names = [f"eval_data/58{s}/retrieval_eval/DJI_000{k}.JPG" for s in (1, 2) for k in (1, 2)]
    for name in names:
        write_jpg(tmp_path / name)
    (tmp_path / "eval_img_list.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "gl3d_gt_pairs").write_text("0 1\n2 3\n3 2\n")
    gt = open_scene("gl3d", tmp_path).ground_truth()
    assert gt.names == names and gt.relevance.query.tolist() == [0, 2, 3]
    parts = {p.name: p for p in open_scene("gl3d", tmp_path).archive_parts("gl3d")}
    assert parts["eval_data"].member_prefix == "eval_data/" and not parts["eval_data"].placed
    assert parts["gl3d_gt_pairs"].placed and parts["eval_img_list.txt"].placed


# ---------------------------------------------------------------------------------------------------
# Offline fixtures


CONF = SyntheticConf(seed=0, num_images=18, width=160, height=120)


def test_synthetic_vpr_street_names_carry_the_camera_centres(tmp_path):
    street = synthetic_protocols.build_street(7, CONF.num_images, CONF.width, CONF.height, synthetic.EVAL_TEXTURES)
    scene = synthetic_protocols.generate_vpr(tmp_path / "street", 7, CONF)
    db = [n for n in scene.names if n.startswith("database/")]
    queries = [n for n in scene.names if n.startswith("queries/")]
    assert len(db) == 2 * 7 and len(queries) == 4  # 7 positions seen twice, the rest held-apart queries
    centres = np.array([v.center[:2] for v in street.scene.views]) + synthetic_protocols.UTM_ORIGIN
    parsed = np.array([vpr.parse_utm(n) for n in scene.names])
    np.testing.assert_allclose(parsed, centres, atol=0.006)  # names round to the centimetre
    # database positions every 8 m along the street, each position twice (both facades)
    assert np.allclose(np.diff(parsed[:len(db):2, 0]), synthetic_protocols.STREET_SPACING, atol=1.0)
    # queries lie between the first and last database positions, none at a database position
    assert parsed[len(db):, 0].min() > parsed[0, 0] - 4 and parsed[len(db):, 0].max() < parsed[len(db) - 1, 0] + 4
    gt = open_scene("synthetic_vpr", tmp_path, "street", synthetic={"num_images": 18}).ground_truth()
    assert set(np.unique(gt.relevance.query)) == set(range(len(db), len(db) + 4))  # every query has a positive
    assert (tmp_path / "street/images/test" / queries[0]).is_file()


def test_synthetic_revisitop_labels_follow_the_true_overlap_of_the_box(tmp_path):
    scene = synthetic_protocols.generate_revisitop(tmp_path / "land", 5, CONF)
    ground = revisitop.load_ground_truth(tmp_path / "land" / "gnd_land.pkl")
    assert len(ground.qimlist) == 3 and len(ground.imlist) == 15 and not set(ground.qimlist) & set(ground.imlist)
    # recompute the overlap of each query's box from an independent render of the same scene
    render = synthetic.generate_scene(tmp_path / "render", 5, CONF.num_images, CONF.width, CONF.height)
    model = colmap.read_model(tmp_path / "render" / synthetic.MODEL_DIR)
    by_name = {im.name: im for im in model.images.values()}
    stems = scene.names
    box = np.array([16, 12, 144, 108])  # the central 80 %
    for q_stem, labels in zip(ground.qimlist, ground.queries, strict=True):
        assert labels.bbx.tolist() == box.tolist()
        q = by_name[render.names[stems.index(q_stem)]]
        seen = [p for p in q.points2D if p.has_point3D()]
        inside = [p.point3D_id for p in seen if box[0] <= p.xy[0] < box[2] and box[1] <= p.xy[1] < box[3]]
        sets = [np.array(inside)] + [np.array([p.point3D_id for p in by_name[render.names[stems.index(d)]].points2D
                                               if p.has_point3D()]) for d in ground.imlist]
        overlap = covisibility_overlap(sets)[0, 1:]
        assert labels.easy.tolist() == np.flatnonzero(overlap >= 0.5).tolist()
        assert labels.hard.tolist() == np.flatnonzero((overlap >= 0.25) & (overlap < 0.5)).tolist()
        assert labels.junk.tolist() == np.flatnonzero((overlap >= 0.1) & (overlap < 0.25)).tolist()
    assert any(len(q.easy) for q in ground.queries) and any(len(q.hard) for q in ground.queries)


def test_synthetic_image_list_pairs_are_the_overlapping_pairs(tmp_path):
    synthetic_protocols.generate_image_list(tmp_path / "coll", 9, CONF)
    scene = open_scene("synthetic_image_list", tmp_path, "coll")
    gt = scene.ground_truth()
    assert gt.names[0] == "images/coll_0000.jpg" and len(gt.names) == CONF.num_images
    synthetic.generate_scene(tmp_path / "render", 9, CONF.num_images, CONF.width, CONF.height)
    overlap = open_scene("eth3d", tmp_path, "render").ground_truth().overlap
    partners = scene.partners(len(gt.names))
    for i in range(len(gt.names)):
        expected = [j for j in range(len(gt.names)) if j != i and overlap[i, j] >= 0.1]
        assert partners[i] == expected
    assert sum(map(len, partners)) > 0


# ---------------------------------------------------------------------------------------------------
# Config


def config_with(name, entry):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["datasets"] = {"demo_train": config["datasets"]["demo_train"], name: entry}
    return config


@pytest.mark.parametrize("entry, error", [
    ({"source": "vpr", "root": "x", "k": 10}, r"datasets\.v\.k: 10 is below 20.*set datasets\.v\.k: 20"),
    ({"source": "revisitop", "k": 100}, r"datasets\.v\.k: a `revisitop` dataset ranks the whole database"),
    ({"source": "vpr", "root": "x", "mode": "register"}, r"fixes its queries \(retrieve mode, queries 'queries/\*'\)"),
    ({"source": "image_list", "root": "x", "methods": ["oracle"]},
     r"'oracle' needs ground-truth overlap, which a `image_list` dataset without `gt_pairs` does not have"),
])
def test_protocol_dataset_config_errors(entry, error):
    entry = {"backbone": "dense_sift", "methods": ["cls"], **entry}
    with pytest.raises(ConfigError, match=error):
        load_datasets(config_with("v", entry))


def test_protocol_datasets_depth_and_urls():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    datasets = load_datasets(config)
    assert (datasets["demo_vpr"].k, datasets["demo_revisitop"].k, datasets["demo_gl3d"].k) == (20, "all", 200)
    assert datasets["demo_gl3d"].retrieval_k == 199  # the self pair is one of match_pairs.txt's 200 lines
    assert datasets["demo"].k is None and datasets["demo"].protocol == "auc"
    rev = datasets["revisitop"]
    assert rev.scenes == ["roxford5k", "rparis6k"] and rev.downloaded
    assert rev.archive_url("gnd_rparis6k.pkl") == "http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl"
    assert rev.archive_url("paris_2-v1.tgz") == "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz"
    assert [p.target for p in rev.reader.archive_parts("rparis6k")] == ["rparis6k", "rparis6k/jpg", "rparis6k/jpg"]
    assert datasets["gl3d"].archive_url("gl3d_gt_pairs").startswith("https://raw.githubusercontent.com/hlzz/mirror/")
    seeds = {zlib.crc32(b"0/landmarks_a")}  # the fixtures' seeds follow the dataset seed and the scene name
    assert synthetic_protocols._seed(SyntheticConf(), "landmarks_a") in seeds

