import shutil
import zipfile

import numpy as np
import pytest

from vop import download
from vop.datasets import colmap, eth3d, synthetic
from vop.io import read_gt


@pytest.fixture(scope="module")
def eth3d_root(tmp_path_factory):
    """A dataset root with one scene in ETH3D's undistorted layout (rendered by the synthetic generator)."""
    root = tmp_path_factory.mktemp("eth3d")
    scene = synthetic.generate_scene(root / "courtyard", seed=2, num_images=4, width=80, height=60)
    return root, scene


def test_scene_paths():
    images, model, depth = eth3d.scene_paths("/data", "office")
    assert str(images) == "/data/office/images"
    assert str(model) == "/data/office/dslr_calibration_undistorted"
    assert str(depth) == "/data/office/ground_truth_depth/dslr_images_undistorted"
    assert len(eth3d.SCENES) == 13 and "relief_2" in eth3d.SCENES


def test_ground_truth(eth3d_root, tmp_path):
    root, scene = eth3d_root
    eth3d.main(["gt", str(root), "courtyard", str(tmp_path / "gt.h5")])
    gt = read_gt(tmp_path / "gt.h5")
    assert gt.names == scene.names  # exactly as in images.txt
    for i, view in enumerate(scene.views):
        np.testing.assert_allclose(gt.K[i], view.K)
        np.testing.assert_allclose(gt.T_w2cam[i][:3, :3], view.R, atol=1e-12)
        np.testing.assert_allclose(gt.T_w2cam[i][:3, 3], view.tvec)
        np.testing.assert_array_equal(gt.image_size[i], [80, 60])
    model = colmap.read_model(eth3d.scene_paths(root, "courtyard")[1])
    np.testing.assert_array_equal(gt.overlap, colmap.ground_truth_from_model(model).overlap)
    assert gt.overlap.shape == (4, 4) and np.all(np.diag(gt.overlap) == 1)


def test_depth_reader(eth3d_root, tmp_path):
    root, scene = eth3d_root
    depth_dir = eth3d.scene_paths(root, "courtyard")[2]
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
        eth3d.write_ground_truth(tmp_path, "courtyard", tmp_path / "gt.h5")
    assert not (tmp_path / "gt.h5").exists()
    with pytest.raises(FileNotFoundError, match="calibration of scene 'office' not found"):
        eth3d.write_ground_truth(tmp_path, "office", tmp_path / "gt.h5")


def test_extract_one_scene_of_the_archive(tmp_path):
    """The extract_eth3d_scene rule's call: one scene by prefix, never its namesake office_2."""
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
