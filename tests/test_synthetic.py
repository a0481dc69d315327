import cv2
import numpy as np
import pytest

from vop.cli import main as vop_main
from vop.datasets import colmap, eth3d, synthetic

WIDTH, HEIGHT, NUM_IMAGES = 160, 120, 6


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "scene"
    scene = synthetic.generate_scene(out, seed=0, num_images=NUM_IMAGES, width=WIDTH, height=HEIGHT)
    return scene, out


def on_a_surface(quads: synthetic.Quads, points: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Which points lie on one of the quads (within `tol` metres of its plane, inside its edges)."""
    rel = points[:, None, :] - quads.corner[None]  # (P,Q,3)
    dist = np.abs(np.einsum("pqk,qk->pq", rel, quads.normal))
    a = np.einsum("pqk,qk->pq", rel, quads.right) / np.einsum("qk,qk->q", quads.right, quads.right)
    b = np.einsum("pqk,qk->pq", rel, quads.down) / np.einsum("qk,qk->q", quads.down, quads.down)
    inside = (a > -1e-9) & (a < 1 + 1e-9) & (b > -1e-9) & (b < 1 + 1e-9)
    return np.any(inside & (dist < tol), axis=1)


def test_points_project_onto_their_rendered_depth(scene_dir):
    scene, out = scene_dir
    model = colmap.read_model(out / synthetic.MODEL_DIR)
    gt = colmap.ground_truth_from_model(model)
    xyz_by_id = {pid: p.xyz for pid, p in model.points3D.items()}
    assert on_a_surface(scene.quads, np.stack(list(xyz_by_id.values()))).all()
    checked = 0
    for i, name in enumerate(gt.names):
        image = next(im for im in model.images.values() if im.name == name)
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        xys = np.array([p.xy for p in image.points2D if p.has_point3D()])
        assert len(ids) > 0
        depth = eth3d.read_depth(out / synthetic.DEPTH_DIR / name.split("/")[-1], WIDTH, HEIGHT)
        xyz = np.stack([xyz_by_id[pid] for pid in ids])
        cam = xyz @ gt.T_w2cam[i][:3, :3].T + gt.T_w2cam[i][:3, 3]
        assert (cam[:, 2] > 0).all()
        uv = cam[:, :2] / cam[:, 2:] @ gt.K[i][:2, :2].T + gt.K[i][:2, 2]
        np.testing.assert_allclose(uv, xys, atol=1e-6)  # the stored observation is the projection
        col, row = np.floor(uv).astype(int).T
        assert ((col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)).all()
        rel_err = np.abs(depth[row, col] - cam[:, 2]) / cam[:, 2]
        assert rel_err.max() < 0.01
        checked += len(xyz)
        # And the depth map is the geometry: back-projected pixels lie on the surfaces.
        rows, cols = np.mgrid[0:HEIGHT:7, 0:WIDTH:7].reshape(2, -1)
        z = depth[rows, cols].astype(np.float64)
        rays = np.stack([cols + 0.5, rows + 0.5, np.ones_like(z)], 1) @ np.linalg.inv(gt.K[i]).T
        world = (rays * z[:, None] - gt.T_w2cam[i][:3, 3]) @ gt.T_w2cam[i][:3, :3]
        assert on_a_surface(scene.quads, world, tol=1e-5 * z.max()).all()
    assert checked > 500


def test_depth_is_the_nearest_surface(scene_dir):
    """Brute force for random pixels: intersect the ray with every quad's plane, keep the nearest hit."""
    scene, out = scene_dir
    quads = scene.quads
    rng = np.random.default_rng(0)
    for view, name in zip(scene.views, scene.names):
        depth = eth3d.read_depth(out / synthetic.DEPTH_DIR / name.split("/")[-1], WIDTH, HEIGHT)
        rows, cols = rng.integers(0, HEIGHT, 200), rng.integers(0, WIDTH, 200)
        rays_cam = np.stack([cols + 0.5, rows + 0.5, np.ones(200)], 1) @ np.linalg.inv(view.K).T
        rays = rays_cam @ view.R  # world directions with camera z = 1
        center = view.center
        best = np.full(200, np.inf)
        for q in range(len(quads.names)):
            n = quads.normal[q]
            t = ((quads.corner[q] - center) @ n) / (rays @ n)
            hit = center + t[:, None] * rays - quads.corner[q]
            a = hit @ quads.right[q] / (quads.right[q] @ quads.right[q])
            b = hit @ quads.down[q] / (quads.down[q] @ quads.down[q])
            ok = (t > 0) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
            best = np.where(ok & (t < best), t, best)
        np.testing.assert_allclose(depth[rows, cols], best, rtol=1e-6)


def test_tracks_match_observations(scene_dir):
    _, out = scene_dir
    model = colmap.read_model(out / synthetic.MODEL_DIR)
    for pid, p in model.points3D.items():
        assert p.track.length() >= 1
        for element in p.track.elements:
            assert model.images[element.image_id].points2D[element.point2D_idx].point3D_id == pid
    assert all(c.model.name == "PINHOLE" and (c.width, c.height) == (WIDTH, HEIGHT) for c in model.cameras.values())


def test_same_seed_same_bytes_other_seed_differs(scene_dir, tmp_path):
    _, out = scene_dir
    synthetic.generate_scene(tmp_path / "again", seed=0, num_images=NUM_IMAGES, width=WIDTH, height=HEIGHT)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == 5 + 2 * NUM_IMAGES  # COLMAP's cameras, images, points3D, rigs and frames
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    synthetic.generate_scene(tmp_path / "other", seed=1, num_images=NUM_IMAGES, width=WIDTH, height=HEIGHT)
    image = f"{synthetic.IMAGE_DIR}/IMG_0000.JPG"
    assert (out / image).read_bytes() != (tmp_path / "other" / image).read_bytes()
    assert (out / synthetic.MODEL_DIR / "images.txt").read_text() != \
        (tmp_path / "other" / synthetic.MODEL_DIR / "images.txt").read_text()


def test_overlap_spans_none_to_most(scene_dir):
    _, out = scene_dir
    gt = colmap.ground_truth_from_model(colmap.read_model(out / synthetic.MODEL_DIR))
    pairs = gt.overlap[np.triu_indices(NUM_IMAGES, 1)]
    assert (pairs < 0.05).any()
    assert (pairs > 0.5).any()
    assert ((pairs >= 0.05) & (pairs <= 0.5)).any()
    np.testing.assert_array_equal(np.diag(gt.overlap), 1)


def test_eth3d_layout_and_raw_depth(scene_dir):
    _, out = scene_dir
    names = [f"IMG_{k:04d}.JPG" for k in range(NUM_IMAGES)]
    for name in names:
        image = cv2.imread(str(out / synthetic.IMAGE_DIR / name))
        assert image.shape == (HEIGHT, WIDTH, 3)
        depth_file = out / synthetic.DEPTH_DIR / name
        assert depth_file.stat().st_size == WIDTH * HEIGHT * 4  # ETH3D raw float32, no header
        depth = np.fromfile(depth_file, "<f4").reshape(HEIGHT, WIDTH)
        assert np.isfinite(depth).all() and (depth > 0.3).all()  # closed room: every pixel hits a surface
    model = colmap.read_model(out / synthetic.MODEL_DIR)
    assert sorted(im.name for im in model.images.values()) == [f"dslr_images_undistorted/{n}" for n in names]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_existing_output_is_not_clobbered(scene_dir):
    _, out = scene_dir
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.generate_scene(out, seed=3, num_images=2, width=32, height=24)


def test_texture_lists_are_disjoint_and_offline():
    assert not set(synthetic.EVAL_TEXTURES) & set(synthetic.TRAIN_TEXTURES)
    for name in synthetic.EVAL_TEXTURES + synthetic.TRAIN_TEXTURES:
        texture = synthetic.load_texture(name)
        assert texture.ndim == 3 and texture.shape[2] == 3 and min(texture.shape[:2]) >= 128
    with pytest.raises(KeyError, match="unknown texture"):
        synthetic.load_texture("lena")


def test_cli_train_textures(tmp_path):
    assert vop_main(["generate", str(tmp_path / "s"), "--seed", "5", "--num-images", "2", "--width", "48",
                     "--height", "32", "--textures", "train"]) == 0
    gt = colmap.ground_truth_from_model(colmap.read_model(tmp_path / "s" / synthetic.MODEL_DIR))
    assert gt.names == ["dslr_images_undistorted/IMG_0000.JPG", "dslr_images_undistorted/IMG_0001.JPG"]
    np.testing.assert_array_equal(gt.image_size, [[48, 32], [48, 32]])
