"""Feature dumping: the features-{backbone}.h5 contract, batching, bad input, the CLI."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest

from vop import io
from vop.backbones import load_backbone
from vop.cli import main as vop_main
from vop.features import dump_features, read_names_file
from vop.grid import patch_keypoints

NAMES = ["a.jpg", "sub/b.png", "c.jpg", "sub/deeper/d.jpg"]
SIZES = {"a.jpg": (320, 240), "sub/b.png": (200, 300), "c.jpg": (224, 224), "sub/deeper/d.jpg": (500, 120)}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        noise = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)
        image = (255 * (noise - noise.min()) / np.ptp(noise)).astype(np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), image)
    return root


@pytest.fixture(scope="module")
def dense_sift():
    return load_backbone("dense_sift", device="cpu")


def read_all(path):
    out = {}
    with h5py.File(path, "r") as f:
        for name in io.list_h5_names(path):
            out[name] = {k: f[name][k][()] for k in f[name]}
    return out


def test_features_file_contract(image_dir, dense_sift, tmp_path):
    out = dump_features(image_dir, NAMES, dense_sift, tmp_path / "features.h5", batch_size=3)
    features = read_all(out)
    assert sorted(features) == sorted(NAMES)
    for name, groups in features.items():
        assert set(groups) == {"global_descriptor", "patch_descriptors", "keypoints", "image_size"}
        assert groups["global_descriptor"].shape == (128,) and groups["global_descriptor"].dtype == np.float32
        assert groups["patch_descriptors"].shape == (256, 128) and groups["patch_descriptors"].dtype == np.float16
        assert groups["keypoints"].shape == (256, 2) and groups["keypoints"].dtype == np.float32
        assert np.issubdtype(groups["image_size"].dtype, np.integer)
        assert tuple(groups["image_size"]) == SIZES[name]  # original [w, h]
    stacked = io.read_stacked(out, NAMES, "patch_descriptors", np.float32)
    assert stacked.shape == (4, 256, 128)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was moved into place


def test_keypoints_are_patch_centres():
    kp = patch_keypoints()
    assert kp.shape == (256, 2) and kp.dtype == np.float32
    rows, cols = np.divmod(np.arange(256), 16)
    np.testing.assert_array_equal(kp[:, 0], 14 * cols + 7)
    np.testing.assert_array_equal(kp[:, 1], 14 * rows + 7)
    assert tuple(kp[17]) == (21.0, 21.0)  # row 1, column 1


def test_batch_size_does_not_change_the_output(image_dir, dense_sift, tmp_path):
    one = read_all(dump_features(image_dir, NAMES, dense_sift, tmp_path / "b1.h5", batch_size=1, num_workers=1))
    three = read_all(dump_features(image_dir, NAMES, dense_sift, tmp_path / "b3.h5", batch_size=3, num_workers=2))
    for name in NAMES:
        for key in one[name]:
            np.testing.assert_array_equal(one[name][key], three[name][key], err_msg=f"{name}/{key}")


def test_dinov2_features_batched(image_dir, tmp_path):
    from transformers import Dinov2Config

    from vop.backbones.dinov2 import load_dinov2

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    backbone = load_dinov2("dinov2_vits14", "random", config=config)
    one = read_all(dump_features(image_dir, NAMES, backbone, tmp_path / "b1.h5", batch_size=1))
    four = read_all(dump_features(image_dir, NAMES, backbone, tmp_path / "b4.h5", batch_size=4))
    for name in NAMES:
        assert one[name]["patch_descriptors"].shape == (256, 32)
        np.testing.assert_allclose(one[name]["global_descriptor"], four[name]["global_descriptor"], atol=1e-5)
        np.testing.assert_allclose(
            one[name]["patch_descriptors"].astype(np.float32), four[name]["patch_descriptors"], atol=2e-3
        )


def test_corrupt_or_missing_image_is_named_and_nothing_is_written(image_dir, dense_sift, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    for name in ("a.jpg", "c.jpg"):
        (bad_dir / name).write_bytes((image_dir / name).read_bytes())
    data = (image_dir / "sub/deeper/d.jpg").read_bytes()
    (bad_dir / "broken.jpg").write_bytes(data[: int(len(data) * 0.4)])  # OpenCV alone decodes it, grey below
    out = tmp_path / "features.h5"
    with pytest.raises(ValueError, match=r"broken\.jpg: truncated: ends before the JPEG end marker"):
        dump_features(bad_dir, ["a.jpg", "c.jpg", "broken.jpg"], dense_sift, out, batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg: image not found"):
        dump_features(bad_dir, ["a.jpg", "nope.jpg"], dense_sift, out, batch_size=1)
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="duplicate image names"):
        dump_features(bad_dir, ["a.jpg", "a.jpg"], dense_sift, out, batch_size=4)


def test_cli_with_gt_h5_and_text_names(image_dir, tmp_path, capsys):
    gt = io.GroundTruth(
        names=NAMES,
        K=np.tile(np.eye(3), (4, 1, 1)),
        T_w2cam=np.tile(np.eye(4), (4, 1, 1)),
        image_size=np.array([SIZES[n] for n in NAMES]),
        overlap=None,
    )
    io.write_gt(tmp_path / "gt.h5", gt)
    assert read_names_file(tmp_path / "gt.h5") == NAMES
    (tmp_path / "names.txt").write_text("# images\n" + "\n".join(NAMES[:2]) + "\n\n")
    assert read_names_file(tmp_path / "names.txt") == NAMES[:2]

    assert vop_main(["features", "--image-dir", str(image_dir), "--names-from", str(tmp_path / "gt.h5"),
                     "--backbone", "dense_sift", "--out", str(tmp_path / "features.h5"), "--batch-size", "2",
                     "--device", "cpu"]) == 0
    assert io.list_h5_names(tmp_path / "features.h5") == sorted(NAMES)
    with pytest.raises(SystemExit):
        vop_main(["features", "--help"])
    assert "--names-from" in capsys.readouterr().out


def test_flipped_tokens_are_the_tokens_of_the_mirrored_image(image_dir, dense_sift, tmp_path):
    name = "c.jpg"  # already 224x224: no resize, so mirroring commutes with the preprocessing exactly
    flipped = dump_features(image_dir, [name], dense_sift, tmp_path / "f.h5", batch_size=4, with_flipped=True)
    features = read_all(flipped)
    (tmp_path / "mirrored").mkdir()
    # PNG keeps the mirrored pixels exact (a JPEG round trip would not)
    assert cv2.imwrite(str(tmp_path / "mirrored/c.png"), cv2.imread(str(image_dir / name))[:, ::-1])
    mirrored = read_all(dump_features(tmp_path / "mirrored", ["c.png"], dense_sift, tmp_path / "m.h5", batch_size=4))
    np.testing.assert_allclose(
        features[name]["patch_descriptors_flipped"].astype(np.float32),
        mirrored["c.png"]["patch_descriptors"].astype(np.float32),
        atol=1e-3,
    )
    assert not np.allclose(features[name]["patch_descriptors_flipped"], features[name]["patch_descriptors"], atol=1e-2)
