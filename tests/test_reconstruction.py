import pycolmap
import pytest

from vop.colmap_database import read_counts
from vop.reconstruction import exhaustive_pairs, reconstruct, sequential_pairs


def test_exhaustive_pairs_register_every_image_at_the_true_poses(walk):
    scene, out = walk
    result = reconstruct(exhaustive_pairs(scene.gt.names), out / "local.h5", out / "sfm", gt=scene.gt,
                         image_dir=scene.image_dir)
    m = result.metrics
    # Measured (seed 5): 10/10 registered, 2104 points, track 4.6, 0.24 px, median rotation error 0.03
    # degrees, median centre error 0.001 of the extent; ~2 s.
    assert m["num_models"] == 1 and m["registered"] == 10 and m["registered_pct"] == 100.0, m
    assert m["alignment"] == "ok" and m["rot_within_5deg_pct"] == 100.0, m
    assert m["median_rot_err_deg"] < 0.5 and m["median_center_err_rel"] < 0.01, m
    assert m["points3D"] > 1000 and m["mean_track_length"] > 3 and m["mean_reprojection_error"] < 1.0, m
    assert m["pairs"] == m["pairs_matched"] == 45 and m["pairs_verified"] >= 40, m
    counts = read_counts(result.database)
    assert counts["images"] == 10 and counts["matched_pairs"] == 45
    on_disk = pycolmap.Reconstruction(out / "sfm" / "models" / "0")
    assert on_disk.num_reg_images() == 10 and on_disk.num_points3D() == m["points3D"]
    assert not (out / "sfm" / "models" / "1").exists()


def test_pairs_that_split_the_scene_give_two_models(walk):
    scene, out = walk
    names = scene.gt.names
    pairs = exhaustive_pairs(names[:5]) + exhaustive_pairs(names[5:])
    result = reconstruct(pairs, out / "local.h5", out / "split", gt=scene.gt)
    m = result.metrics
    assert m["num_models"] == 2 and m["model_sizes"] == [5, 5], m
    assert m["registered_pct"] == 50.0 and m["registered_any_pct"] == 100.0, m
    halves = sorted(sorted(im.name for im in rec.images.values() if im.has_pose) for rec in result.models)
    assert halves == [names[:5], names[5:]]
    assert sorted(p.name for p in (out / "split" / "models").iterdir()) == ["0", "1"]


def test_unknown_intrinsics_are_guessed_and_refined(walk):
    scene, out = walk
    result = reconstruct(sequential_pairs(scene.gt.names, 4), out / "local.h5", out / "guess", gt=scene.gt,
                         known_intrinsics=False)
    m = result.metrics
    assert m["registered"] == 10 and m["rot_within_5deg_pct"] == 100.0, m
    camera = result.largest.cameras[1]
    assert camera.model_name == "SIMPLE_RADIAL"
    # COLMAP's guess 1.2 * 640 = 768 px refined towards the true 512 px
    assert abs(camera.params[0] - scene.gt.K[0, 0, 0]) < 0.05 * scene.gt.K[0, 0, 0], camera.params


def test_pair_helpers():
    names = [f"{k}.jpg" for k in (3, 1, 2, 0)]
    assert exhaustive_pairs(names) == [("3.jpg", "1.jpg"), ("3.jpg", "2.jpg"), ("3.jpg", "0.jpg"),
                                       ("1.jpg", "2.jpg"), ("1.jpg", "0.jpg"), ("2.jpg", "0.jpg")]
    assert sequential_pairs(names, 2) == [("0.jpg", "1.jpg"), ("0.jpg", "2.jpg"), ("1.jpg", "2.jpg"),
                                          ("1.jpg", "3.jpg"), ("2.jpg", "3.jpg")]
    with pytest.raises(ValueError, match="151 images.*max_images=150"):
        exhaustive_pairs([str(k) for k in range(151)])
