import shutil
import zipfile

import numpy as np
import pytest

from vop import download
from vop.cli import main as vop_main
from vop.datasets import colmap, eth3d, open_scene, synthetic
from vop.io import read_gt


@pytest.fixture(scope="module")
def eth3d_root(tmp_path_factory):
    """A dataset root with one scene in ETH3D's undistorted layout (rendered by the synthetic generator)."""
    root = tmp_path_factory.mktemp("eth3d")
    scene = synthetic.generate_scene(root / "courtyard", seed=2, num_images=4, width=80, height=60)
    return root, scene


def test_layout():
    scene = open_scene("eth3d", "/data", "office")
    assert str(scene.image_dir) == "/data/office/images"
    assert str(scene.model_dir) == "/data/office/dslr_calibration_undistorted"
    assert str(scene.depth_dir) == "/data/office/ground_truth_depth/dslr_images_undistorted"
    assert [str(p) for p in scene.input_files()] == [f"/data/office/dslr_calibration_undistorted/{n}.txt"
                                                     for n in ("cameras", "images", "points3D")]
    assert len(eth3d.SCENES) == 13 and "relief_2" in eth3d.SCENES and eth3d.Eth3dScene.default_scenes == eth3d.SCENES
    [part] = eth3d.Eth3dScene.archive_parts("office")
    assert (part.name, part.archive, part.member_prefix) == ("office", eth3d.ARCHIVE, "ETH3D_undistorted/office/")


def test_ground_truth(eth3d_root, tmp_path):
    root, scene = eth3d_root
    assert vop_main(["ground-truth", "--source", "eth3d", "--root", str(root), "--scene", "courtyard",
                     "--out", str(tmp_path / "gt.h5")]) == 0
    gt = read_gt(tmp_path / "gt.h5")
    assert gt.names == scene.names  # exactly as in images.txt
    for i, view in enumerate(scene.views):
        np.testing.assert_allclose(gt.K[i], view.K)
        np.testing.assert_allclose(gt.T_w2cam[i][:3, :3], view.R, atol=1e-12)
        np.testing.assert_allclose(gt.T_w2cam[i][:3, 3], view.tvec)
        np.testing.assert_array_equal(gt.image_size[i], [80, 60])
    model = colmap.read_model(open_scene("eth3d", root, "courtyard").model_dir)
    np.testing.assert_array_equal(gt.overlap, colmap.ground_truth_from_model(model).overlap)
    assert gt.overlap.shape == (4, 4) and np.all(np.diag(gt.overlap) == 1)


def test_depth_reader(eth3d_root, tmp_path):
    root, scene = eth3d_root
    depth_dir = open_scene("eth3d", root, "courtyard").depth_dir
    depth = eth3d.read_depth(depth_dir / "IMG_0000.JPG", 80, 60)
    assert depth.shape == (60, 80) and depth.dtype == np.float32
    # ETH3D marks pixels without ground truth with +inf.
    raw = np.full((3, 4), np.inf, np.float32)
    raw[1, 2] = 2.5
    raw.tofile(tmp_path / "d.JPG")
    np.testing.assert_array_equal(eth3d.read_depth(tmp_path / "d.JPG", 4, 3), raw)
    with pytest.raises(ValueError, match=r"d\.JPG: 48 bytes.*5x3 image has 60"):
        eth3d.read_depth(tmp_path / "d.JPG", 5, 3)


def test_missing_image_is_named(eth3d_root, tmp_path):
    root, _ = eth3d_root
    shutil.copytree(root / "courtyard", tmp_path / "courtyard")
    (tmp_path / "courtyard/images/dslr_images_undistorted/IMG_0002.JPG").unlink()
    with pytest.raises(FileNotFoundError, match=r"IMG_0002\.JPG.*images\.txt.*incomplete"):
        open_scene("eth3d", tmp_path, "courtyard").write_ground_truth(tmp_path / "gt.h5")
    assert not (tmp_path / "gt.h5").exists()
    with pytest.raises(FileNotFoundError, match="calibration of scene 'office' not found"):
        open_scene("eth3d", tmp_path, "office").write_ground_truth(tmp_path / "gt.h5")


def test_extract_one_scene_of_the_archive(tmp_path):
    """The extract_part rule's call for an ETH3D scene: one scene by prefix, never its namesake office_2."""
    archive = tmp_path / "ETH3D_undistorted.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ETH3D_undistorted/office/dslr_calibration_undistorted/images.txt", "office")
        zf.writestr("ETH3D_undistorted/office_2/x.txt", "not this scene")
        zf.writestr("ETH3D_undistorted/pipes/x.txt", "nor this one")
    # Snakemake creates the output's folders before the job: overwrite=True replaces them.
    (tmp_path / "out/ETH3D_undistorted/office/dslr_calibration_undistorted").mkdir(parents=True)
    scene = download.extract(archive, tmp_path / "out", member_prefix="ETH3D_undistorted/office/", overwrite=True)
    assert scene == tmp_path / "out/ETH3D_undistorted/office"
    assert (scene / "dslr_calibration_undistorted/images.txt").read_text() == "office"
    assert sorted(p.name for p in (tmp_path / "out/ETH3D_undistorted").iterdir()) == ["office"]
