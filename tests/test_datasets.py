"""Readers on small fixtures written in each dataset's native layout: MegaDepth, InLoc, colmap, folder."""

import io
import logging
import pickle
import shutil
import zipfile

import cv2
import h5py
import numpy as np
import pycolmap
import pytest

from vop import labels
from vop.cli import main as vop_main
from vop.conf import LabelsConf, TriangulationConf
from vop.datasets import (
    NoDepthError,
    eth3d,
    megadepth,
    open_scene,
    synthetic,
)
from vop.geometry import pose_overlap
from vop.images import image_size
from vop.io import read_gt, read_pairs, write_pairs
from vop.local_features import extract_local_features


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """One rendered scene in the ETH3D layout (images, COLMAP model with tracks, raw depth)."""
    root = tmp_path_factory.mktemp("eth3d")
    synthetic.generate_scene(root / "room", seed=5, num_images=6, width=96, height=72)
    return root


def write_megadepth(synthetic_root, root, scene="0015", drop=()):
    """The synthetic scene re-written in the glue-factory MegaDepth layout, plus one unregistered image.

    The D2-Net overlap is asymmetric (|shared| / |points of i|), with -1 on the diagonal and for images
    that were dropped; depth is an h5 `depth` with 0 where unknown.
    """
    src = eth3d.Eth3dScene(synthetic_root, "room")
    gt = src.ground_truth()
    by_name = {im.name: im for im in src.read_model().images.values()}
    points = [{p.point3D_id for p in by_name[n].points2D if p.has_point3D()} for n in gt.names]
    n = len(gt.names) + 1  # the last entry: an image the reconstruction did not keep
    overlap = np.full((n, n), -1.0)
    for i in range(len(gt.names)):
        for j in range(len(gt.names)):
            if i != j:
                overlap[i, j] = len(points[i] & points[j]) / len(points[i])
    image_paths, depth_paths = [], []
    for k, name in enumerate(gt.names):
        stem = f"{k:03d}_{name.split('/')[-1].split('.')[0]}"
        image_paths.append(f"Undistorted_SfM/{scene}/images/{stem}.jpg")
        depth_paths.append(f"phoenix/S6/zl548/MegaDepth_v1/{scene}/dense0/depths/{stem}.h5")
        (root / "Undistorted_SfM" / scene / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(src.image_dir / name, root / image_paths[-1])
        if stem not in drop:
            (root / "depth_undistorted" / scene).mkdir(parents=True, exist_ok=True)
            depth = src.depth(name, gt.image_size[k])
            with h5py.File(root / "depth_undistorted" / scene / f"{stem}.h5", "w") as f:
                f["depth"] = np.where(np.isfinite(depth), depth, 0).astype(np.float32)
    image_paths.append(None)
    depth_paths.append(None)
    (root / "scene_info").mkdir(parents=True, exist_ok=True)
    np.savez(root / "scene_info" / f"{scene}.npz",
             image_paths=np.array(image_paths, dtype=object), depth_paths=np.array(depth_paths, dtype=object),
             intrinsics=np.concatenate([gt.K, np.eye(3)[None]]), poses=np.concatenate([gt.T_w2cam, np.eye(4)[None]]),
             overlap_matrix=overlap, scale_ratio_matrix=np.ones((n, n)))
    return gt


def test_megadepth_ground_truth(synthetic_root, tmp_path):
    ref = write_megadepth(synthetic_root, tmp_path)
    scene = open_scene("megadepth", tmp_path, "0015")
    gt = scene.ground_truth()
    assert scene.image_dir == tmp_path / "Undistorted_SfM/0015/images"
    assert len(gt.names) == len(ref.names) and gt.names == sorted(gt.names)
    assert all((scene.image_dir / n).is_file() for n in gt.names)
    np.testing.assert_allclose(gt.K, ref.K)
    np.testing.assert_allclose(gt.T_w2cam, ref.T_w2cam)
    np.testing.assert_array_equal(gt.image_size, ref.image_size)  # read from the JPEG headers
    # max of the two D2-Net directions is exactly our co-visibility |Pi & Pj| / min(|Pi|, |Pj|)
    np.testing.assert_allclose(gt.overlap, ref.overlap, atol=1e-6)
    assert np.allclose(gt.overlap, gt.overlap.T)


def test_megadepth_labels_match_the_eth3d_layout(synthetic_root, tmp_path):
    """Training labels through the reader interface: the same scene gives the same labels in both layouts."""
    write_megadepth(synthetic_root, tmp_path / "md")
    md = open_scene("megadepth", tmp_path / "md", "0015")
    md.write_ground_truth(tmp_path / "md_gt.h5")
    eth = open_scene("eth3d", synthetic_root, "room")
    eth.write_ground_truth(tmp_path / "eth_gt.h5")
    conf = LabelsConf(pairs_per_bin=10, num_negative=3, seed=0, stride=2)
    a = labels.scene_labels(md, tmp_path / "md_gt.h5", tmp_path / "md_labels.h5", conf)
    b = labels.scene_labels(eth, tmp_path / "eth_gt.h5", tmp_path / "eth_labels.h5", conf)
    np.testing.assert_array_equal(a["pairs"], b["pairs"])
    np.testing.assert_array_equal(a["offsets"], b["offsets"])
    np.testing.assert_array_equal(a["positives"], b["positives"])
    assert len(a["positives"]) > 0


def test_megadepth_missing_depth_and_bad_depth_are_named(synthetic_root, tmp_path):
    write_megadepth(synthetic_root, tmp_path, drop={"001_IMG_0001"})
    scene = open_scene("megadepth", tmp_path, "0015")
    gt = scene.ground_truth()
    with pytest.raises(NoDepthError, match=r"001_IMG_0001\.h5.*depth_undistorted"):
        scene.depth("001_IMG_0001.jpg", gt.image_size[1])
    with pytest.raises(ValueError, match="different releases"):
        scene.depth(gt.names[0], (gt.image_size[0][0] + 1, gt.image_size[0][1]))
    with pytest.raises(FileNotFoundError, match=r"scene_info/0022\.npz.*scene_info.tar.gz"):
        open_scene("megadepth", tmp_path, "0022").ground_truth()


class _Evil:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-target",))


def test_megadepth_scene_info_cannot_run_code(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil()], dtype=object), allow_pickle=True)
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("image_paths.npy", buf.getvalue())
    with pytest.raises(ValueError, match="refusing to load shutil.rmtree"):
        megadepth.load_npz(path)
    good = tmp_path / "good.npz"
    np.savez(good, image_paths=np.array(["a.jpg", None], dtype=object), poses=np.eye(4)[None])
    loaded = megadepth.load_npz(good)
    assert loaded["image_paths"].tolist() == ["a.jpg", None] and loaded["poses"].shape == (1, 4, 4)
    assert pickle.dumps(loaded["image_paths"])  # a plain object array, usable as any other


def write_image(path, width, height, progressive=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), dtype=np.uint8)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    assert cv2.imwrite(str(path), image, params)


def test_inloc_queries_against_cutouts(tmp_path):
    for building, scan in [("DUC1", "024"), ("DUC1", "025"), ("DUC2", "010")]:
        for k in range(2):
            write_image(tmp_path / f"database/cutouts/{building}/{scan}/DUC_cutout_{scan}_{k * 30}_0.jpg", 64, 48)
    write_image(tmp_path / "query/iphone7/IMG_0731.JPG", 36, 48)
    write_image(tmp_path / "query/iphone7/IMG_0732.JPG", 36, 48)
    (tmp_path / "query/iphone7/.DS_Store").write_bytes(b"junk")
    scene = open_scene("inloc", tmp_path, "all")
    gt = scene.ground_truth()
    assert scene.image_dir == tmp_path and not scene.has_poses
    assert len(gt.names) == 8 and gt.overlap is None
    assert gt.names[0] == "database/cutouts/DUC1/024/DUC_cutout_024_0_0.jpg"
    assert gt.names[-2:] == ["query/iphone7/IMG_0731.JPG", "query/iphone7/IMG_0732.JPG"]
    assert gt.image_size[-1].tolist() == [36, 48] and gt.image_size[0].tolist() == [64, 48]
    assert np.isnan(gt.K).all() and np.isnan(gt.T_w2cam).all()
    duc2 = open_scene("inloc", tmp_path, "DUC2").ground_truth()
    assert [n for n in duc2.names if n.startswith("database")] == [
        "database/cutouts/DUC2/010/DUC_cutout_010_0_0.jpg", "database/cutouts/DUC2/010/DUC_cutout_010_30_0.jpg"]
    assert len(duc2.names) == 4
    with pytest.raises(FileNotFoundError, match="DUC3: InLoc cutouts not found.*cutouts.tar.gz"):
        open_scene("inloc", tmp_path, "DUC3").ground_truth()
    with pytest.raises(NoDepthError, match="has no depth maps"):
        scene.depth(gt.names[0], (64, 48))


@pytest.mark.parametrize("fmt", [".txt", ".bin"])
def test_colmap_scene_text_and_binary(synthetic_root, tmp_path, fmt):
    """Own data: a model (text, or binary as COLMAP writes it under sparse/0) beside an image folder."""
    own = tmp_path / "own"
    room = open_scene("eth3d", synthetic_root, "room")
    shutil.copytree(room.image_dir, own / "photos")
    model_dir = room.model_dir
    if fmt == ".txt":
        shutil.copytree(model_dir, own / "sparse")
        scene = open_scene("colmap", own, None, images="photos", model="sparse")
    else:
        (own / "sparse").mkdir()
        pycolmap.Reconstruction(str(model_dir)).write_binary(str(own / "sparse"))
        (own / "sparse" / "0").mkdir()
        for name in ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"):
            (own / "sparse" / name).rename(own / "sparse" / "0" / name)
        scene = open_scene("colmap", own, None, images="photos")  # model: sparse -> sparse/0
    assert scene.model_dir == own / "sparse" / ("0" if fmt == ".bin" else "")
    gt = scene.ground_truth()
    ref = eth3d.Eth3dScene(synthetic_root, "room").ground_truth()
    assert gt.names == ref.names
    np.testing.assert_allclose(gt.K, ref.K)
    np.testing.assert_allclose(gt.T_w2cam, ref.T_w2cam, atol=1e-9)
    np.testing.assert_allclose(gt.overlap, ref.overlap)
    (own / "photos" / gt.names[2]).unlink()
    with pytest.raises(FileNotFoundError, match="IMG_0002.JPG: image of .* not found.*`images`"):
        scene.ground_truth()


def test_colmap_select_keeps_part_of_a_capture(synthetic_root, tmp_path):
    room = open_scene("eth3d", synthetic_root, "room")
    shutil.copytree(room.model_dir, tmp_path / "sparse")
    shutil.copytree(room.image_dir, tmp_path / "images")
    full = open_scene("colmap", tmp_path).ground_truth()
    part = open_scene("colmap", tmp_path, None, select=["*_000[0-2].JPG", "*/IMG_0005.JPG"])
    names = [n for n in full.names if n[-5] in "0125"]
    assert part.image_names() == names and len(names) == 4
    gt = part.ground_truth()
    keep = [full.index()[n] for n in names]
    assert gt.names == names
    np.testing.assert_array_equal(gt.overlap, full.overlap[np.ix_(keep, keep)])
    np.testing.assert_array_equal(gt.T_w2cam, full.T_w2cam[keep])
    assert all(np.array_equal(gt.tracks.point_ids[k], full.tracks.point_ids[i]) for k, i in enumerate(keep))
    (tmp_path / "images" / full.names[3]).unlink()  # not selected: not needed
    part.ground_truth()
    with pytest.raises(ValueError, match=r"`select` \['\*.png'\] matches none of its 6 images"):
        open_scene("colmap", tmp_path, None, select=["*.png"]).image_names()


def test_colmap_scene_without_points_falls_back_to_the_pose_overlap(synthetic_root, tmp_path, caplog):
    room = open_scene("eth3d", synthetic_root, "room")
    model = room.read_model()
    model.delete_all_points2D_and_points3D()
    (tmp_path / "sparse").mkdir()
    model.write_text(str(tmp_path / "sparse"))
    shutil.copytree(room.image_dir, tmp_path / "images")
    scene = open_scene("colmap", tmp_path)
    assert scene.needs_tracks() and not room.needs_tracks()
    assert scene.ground_truth().overlap is None  # the reader gives what the files hold: no points, no overlap
    with pytest.raises(ValueError, match="without 3D points.*--local-features"):
        scene.write_ground_truth(tmp_path / "gt.h5")
    # 96x72 renders: too few SIFT tracks for min_points, so the stage falls back to the pose-only estimate
    extract_local_features(scene.image_dir, scene.image_names(), tmp_path / "local.h5")
    with caplog.at_level(logging.WARNING):
        scene.write_ground_truth(tmp_path / "gt.h5", local_features=tmp_path / "local.h5",
                                 conf=TriangulationConf(min_points=10**6))
    assert "falls back to the estimate from the camera poses alone" in caplog.text
    gt = read_gt(tmp_path / "gt.h5", tracks=True)
    assert gt.overlap_source == "poses" and gt.tracks is None
    assert "min_points=1000000" in gt.overlap_info["fallback_reason"]
    ref = eth3d.Eth3dScene(synthetic_root, "room").ground_truth()
    np.testing.assert_allclose(gt.overlap, pose_overlap(ref.K, ref.T_w2cam, ref.image_size))
    assert np.allclose(gt.overlap, gt.overlap.T) and (np.diag(gt.overlap) == 1).all()
    # the estimate agrees with the co-visibility about which pairs overlap at all
    i, j = np.triu_indices(len(gt.names), 1)
    assert np.corrcoef(gt.overlap[i, j], ref.overlap[i, j])[0, 1] > 0.5


def camera(center, yaw_deg, f=400.0, w=200, h=100):
    """K and T_w2cam of a camera at `center` looking along +z turned by `yaw` about the y axis."""
    a = np.radians(yaw_deg)
    R_c2w = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    T = np.eye(4)
    T[:3, :3] = R_c2w.T
    T[:3, 3] = -R_c2w.T @ np.asarray(center, float)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]]), T


def test_pose_overlap_geometry():
    # Four cameras around an object at the origin (distance 10), plus one beside the first, shifted by half
    # its footprint (200 px at f=400 and depth 10 is 5 units wide), and one facing away.
    cams = [camera([0, 0, -10], 0), camera([10, 0, 0], -90), camera([0, 0, 10], 180),
            camera([2.5, 0, -10], 0), camera([0, 0, -10.5], 180), camera([-0.01, 0, -10], 0)]
    K = np.stack([c[0] for c in cams])
    T = np.stack([c[1] for c in cams])
    o = pose_overlap(K, T, np.tile([200, 100], (len(cams), 1)))
    assert o[0, 5] > 0.99  # the same view
    assert o[0, 2] == 0 and o[0, 1] == 0  # the other side of the object, and 90 degrees round it
    assert 0.45 < o[0, 3] <= 0.5  # half the footprint shared, seen from nearly the same direction
    assert o[0, 4] == 0  # looking away
    assert np.allclose(o, o.T)


def test_folder_of_images(tmp_path):
    write_image(tmp_path / "b.jpg", 40, 30)
    write_image(tmp_path / "sub" / "a.JPEG", 33, 21, progressive=True)
    cv2.imwrite(str(tmp_path / "sub" / "c.png"), np.zeros((17, 19), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    write_image(tmp_path / ".thumbnails" / "x.jpg", 8, 8)
    scene = open_scene("folder", tmp_path)
    gt = scene.ground_truth()
    assert gt.names == ["b.jpg", "sub/a.JPEG", "sub/c.png"] and not scene.has_poses
    assert gt.image_size.tolist() == [[40, 30], [33, 21], [19, 17]]
    assert gt.overlap is None and np.isnan(gt.K).all()
    scene.write_ground_truth(tmp_path / "gt.h5")
    assert read_gt(tmp_path / "gt.h5").names == gt.names
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError, match="broken.jpg: truncated: ends before the JPEG end marker"):
        scene.ground_truth()
    with pytest.raises(FileNotFoundError, match="missing_dir: image folder not found.*`images`"):
        open_scene("folder", tmp_path, None, images="missing_dir").ground_truth()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no images"):
        open_scene("folder", tmp_path, "empty").ground_truth()


def test_folder_names_are_checked_where_they_enter(tmp_path):
    odd = ["a,b.jpg", "it's.jpg", "日本/東京.jpg", "x/#2.jpg", "NA.jpg", 'say"x".png']
    for name in odd:
        write_image(tmp_path / "ok" / name, 8, 6)
    scene = open_scene("folder", tmp_path / "ok")
    names = scene.checked_image_names()
    assert sorted(names) == sorted(odd)
    write_pairs(tmp_path / "pairs.txt", [(a, b) for a in names for b in names if a != b])
    assert read_pairs(tmp_path / "pairs.txt") == [(a, b) for a in names for b in names if a != b]
    write_image(tmp_path / "ok" / "trip" / "IMG 9673 é.JPG", 8, 6)
    for call in (scene.checked_image_names, scene.ground_truth):
        with pytest.raises(ValueError, match=r"ok: image name 'trip/IMG 9673 é.JPG' contains whitespace \(SPACE, "
                                             r"' ', at position 8\).*rename the image"):
            call()


def test_image_size_from_headers_matches_decoding(tmp_path):
    for k, (w, h, prog) in enumerate([(640, 480, False), (31, 97, True), (1, 1, False)]):
        write_image(tmp_path / f"{k}.jpg", w, h, prog)
        assert image_size(tmp_path / f"{k}.jpg") == (w, h)


def test_cli_and_unknown_source(tmp_path, capsys):
    write_image(tmp_path / "imgs" / "a.jpg", 20, 10)
    write_image(tmp_path / "imgs" / "b.jpg", 20, 10)
    args = ["ground-truth", "--source", "folder", "--root", str(tmp_path), "--option", "images=imgs",
            "--out", str(tmp_path / "gt.h5")]
    assert vop_main(args) == 0
    assert read_gt(tmp_path / "gt.h5").names == ["a.jpg", "b.jpg"]
    assert "2 images, overlap: none" in capsys.readouterr().out
    # a one-image dataset (one scene, at its root) is told to add images: it has no `scenes` to edit
    (tmp_path / "imgs" / "b.jpg").unlink()
    with pytest.raises(ValueError, match=r"imgs: 1 image\(s\); retrieval and the metrics need at least 2: add "
                                         r"images to \S+imgs$"):
        vop_main(args)
    with pytest.raises(ValueError, match="unknown dataset source 'photos'"):
        open_scene("photos", tmp_path)
    with pytest.raises(ValueError, match=r"^source folder\.imags: unknown key; did you mean 'images'\?\n"):
        open_scene("folder", tmp_path, None, imags="imgs")
