"""The VOP encoder: the model, its training on labelled scenes, checkpoints (ours and glue-factory), apply."""

from __future__ import annotations

import csv
import logging
import pickle

import h5py
import numpy as np
import pytest
import torch

from vop import io
from vop.cli import main as vop_main
from vop.conf import EncoderConf, TrainConf
from vop.encoder import VOPEncoder, apply_encoder, load_encoder, save_encoder
from vop.grid import mirror_patch_indices
from vop.training import load_training_data, make_batch, patch_loss, read_labels, train_encoder

DIM = 32  # token width of the fake backbone: small keeps the tests fast
OUT = 64
_ROWS, _COLS = np.divmod(np.arange(256), 16)
GRID_KP = (np.stack([_COLS, _ROWS], 1) * 14 + 7).astype(np.float32)  # as vop.features.patch_keypoints


def test_grid_keypoints_are_row_major():
    assert tuple(GRID_KP[0]) == (7, 7) and tuple(GRID_KP[1]) == (21, 7) and tuple(GRID_KP[16]) == (7, 21)


def make_scene(root, name, n_images=6, seed=0, flipped=True, step=64, noise=0.5, offset=2.0):
    """A scene whose images see windows of a row of 'world points': patches of two images that see the
    same point share its vector (plus noise) and are the positives; windows 4 steps apart do not overlap.
    A direction common to all tokens makes every patch pair similar until the encoder learns to drop it."""
    rng = np.random.default_rng(seed)
    world = rng.normal(size=(256 + step * (n_images - 1), DIM)) + offset * rng.normal(size=DIM)
    names = [f"{name}/img{i}.jpg" for i in range(n_images)]
    perms = [rng.permutation(256) for _ in range(n_images)]  # patch p of image i sees point step*i + perm[p]
    features = {}
    for i, n in enumerate(names):
        tokens = world[step * i + perms[i]] + noise * rng.normal(size=(256, DIM))
        groups = {
            "global_descriptor": rng.normal(size=DIM).astype(np.float32),
            "patch_descriptors": tokens.astype(np.float16),
            "keypoints": GRID_KP,
            "image_size": np.array([640, 480]),
        }
        if flipped:  # the mirrored image's patch (r, c) is the original's (r, 15 - c)
            groups["patch_descriptors_flipped"] = tokens[mirror_patch_indices(np.arange(256))].astype(np.float16)
        features[n] = groups
    pairs, bins, positives, offsets = [], [], [], [0]
    for i in range(n_images):
        for j in range(i + 1, n_images):
            inverse_j = np.argsort(perms[j])
            point = step * i + perms[i]  # per patch of i
            local = point - step * j
            a = np.flatnonzero((local >= 0) & (local < 256))
            b = inverse_j[local[a]]
            pairs.append((i, j))
            bins.append(-1 if len(a) == 0 else min(int(4 * len(a) / 256), 3))
            positives.append(np.stack([a, b], 1))
            offsets.append(offsets[-1] + len(a))
    features_h5 = root / f"features-{name}.h5"
    labels_h5 = root / f"labels-{name}.h5"
    io.write_image_groups(features_h5, features)
    with h5py.File(labels_h5, "w") as f:
        f.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype()))
        f.create_dataset("pairs", data=np.array(pairs, np.int32))
        f.create_dataset("bins", data=np.array(bins, np.int8))
        f.create_dataset("offsets", data=np.array(offsets, np.int64))
        f.create_dataset("positives", data=np.concatenate(positives).astype(np.int16))
    return features_h5, labels_h5


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return [make_scene(root, "s0", seed=0, flipped=True), make_scene(root, "s1", seed=1, flipped=False)]


def model_inputs(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 256, DIM, generator=g), torch.from_numpy(GRID_KP).expand(batch, -1, -1).clone()


# --- the model ---------------------------------------------------------------------------------------


def test_shapes_and_keys():
    model = VOPEncoder(DIM, OUT)
    tokens, kp = model_inputs()
    assert model(tokens, kp).shape == (3, 256, OUT)
    assert model(tokens.half(), kp).dtype == torch.float32  # float16 tokens from the features file
    # The layout of the published model, so its weights load under the same keys.
    assert set(model.state_dict()) == {
        "input_proj.weight",
        "input_proj.bias",
        *(f"keypoint_encoder.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")),
    }
    assert model.state_dict()["keypoint_encoder.0.weight"].shape == (2 * OUT, 2)
    with pytest.raises(ValueError, match=r"expected tokens \(B,N,32\)"):
        model(torch.zeros(1, 256, 16), kp[:1])


def test_position_encoding_changes_the_output():
    model = VOPEncoder(DIM, OUT, dropout=0.0).eval()
    tokens, kp = model_inputs(batch=2)
    tokens[1] = tokens[0]
    shifted = kp.clone()
    shifted[1] = kp[1].flip(0)  # same tokens, other patch positions
    out = model(tokens, shifted)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    # The shared-grid shortcut (all images on one grid) equals encoding each image alone.
    same = model(tokens, kp)
    torch.testing.assert_close(same[0], model(tokens[:1], kp[:1])[0])
    torch.testing.assert_close(out[1], model(tokens[1:], shifted[1:])[0])


def test_dropout_only_in_training():
    model = VOPEncoder(DIM, OUT, dropout=0.5)
    tokens, kp = model_inputs()
    model.eval()
    torch.testing.assert_close(model(tokens, kp), model(tokens, kp))
    model.train()
    a, b = model(tokens, kp), model(tokens, kp)
    assert not torch.equal(a, b)
    assert (a == 0).float().mean() > 0.3


def test_mirror_patch_indices():
    assert [mirror_patch_indices(i) for i in (0, 15, 16, 31, 255, 240, 17)] == [15, 0, 31, 16, 240, 255, 30]
    idx = np.arange(256)
    assert np.array_equal(mirror_patch_indices(mirror_patch_indices(idx)), idx)  # an involution
    assert np.array_equal(mirror_patch_indices(idx) // 16, idx // 16)  # rows stay


# --- training ----------------------------------------------------------------------------------------


def test_flipped_batches_mirror_tokens_and_labels(scenes):
    data = load_training_data(scenes[:1], "test")
    pair = int(np.flatnonzero(data.overlapping)[0])
    ta, _, tb, _, mask = make_batch(data, [pair])
    fa, _, fb, _, fmask = make_batch(data, [pair], [True])
    a, b = np.nonzero(mask[0].numpy())
    assert len(a) > 10 and fmask.sum() == mask.sum()
    fa_idx, fb_idx = mirror_patch_indices(a), mirror_patch_indices(b)
    assert fmask[0, fa_idx, fb_idx].all()
    # The flipped tokens at the mirrored label indices are the tokens the original labels point at.
    torch.testing.assert_close(fa[0, fa_idx], ta[0, a])
    torch.testing.assert_close(fb[0, fb_idx], tb[0, b])
    assert not torch.equal(fa, ta)


def test_flip_is_refused_without_flipped_tokens(scenes, caplog):
    with caplog.at_level(logging.INFO):
        data = load_training_data(scenes[1:], "test")
    assert data.tokens_flipped is None and not data.can_flip.any()
    assert "flipping is disabled" in caplog.text
    with pytest.raises(ValueError, match="no flipped tokens"):
        make_batch(data, [0], [True])


def test_patch_loss_is_balanced():
    a = torch.nn.functional.one_hot(torch.arange(4), 4).float()[None]  # 4 orthogonal patches
    mask = torch.eye(4, dtype=torch.bool)[None]
    loss, _ = patch_loss(a, a, mask)  # positives at similarity 1, negatives at 0
    assert float(loss) == 0.0
    loss, sums = patch_loss(a, -a, mask)  # positives at -1: (1 - (-1))^2 = 4; negatives at 0
    assert float(loss) == pytest.approx(4.0)
    assert float(sums["n_pos"]) == 4 and float(sums["n_neg"]) == 12


def test_training_reduces_the_loss(scenes, tmp_path):
    ckpt, log_csv, png = tmp_path / "vop.pth", tmp_path / "log.csv", tmp_path / "loss.png"
    result = train_encoder(
        scenes,
        ckpt,
        "test",
        TrainConf(epochs=8, batch_size=8, lr=3e-3, out_dim=OUT, val_fraction=0.2),
        log_csv=log_csv,
        plot_png=png,
        device="cpu",
    )
    history = result["history"]
    assert len(history) == 8
    first, last = history[0], history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["val_loss"] < first["val_loss"]
    assert last["val_pos_sim"] > last["val_neg_sim"] + 0.3
    assert last["val_pos_sim"] - last["val_neg_sim"] > first["val_pos_sim"] - first["val_neg_sim"]
    best = min(history, key=lambda h: h["val_loss"])
    assert result["best_epoch"] == best["epoch"]

    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and float(rows[-1]["train_loss"]) == pytest.approx(last["train_loss"])
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    checkpoint = torch.load(ckpt, weights_only=True)
    assert set(checkpoint) >= {"model", "config", "backbone", "history"}
    assert checkpoint["config"]["in_dim"] == DIM and checkpoint["backbone"] == "test"
    assert len(checkpoint["history"]) == 8 and checkpoint["best_epoch"] == best["epoch"]
    assert not list(tmp_path.glob(".*tmp*"))
    # The kept weights are those of the best epoch: evaluating them gives its validation loss,
    # well below that of the same model untrained (seed 0 initialises it as train_encoder does).
    data = load_training_data(scenes, "test")
    val = np.sort(np.random.default_rng(0).permutation(data.num_pairs)[: round(0.2 * data.num_pairs)])
    ta, ka, tb, kb, mask = make_batch(data, val)
    torch.manual_seed(0)
    untrained = VOPEncoder(DIM, OUT).eval()
    with torch.no_grad():
        loss, _ = patch_loss(*outputs_pair(load_encoder(ckpt, "test"), ta, ka, tb, kb), mask)
        loss_untrained, _ = patch_loss(*outputs_pair(untrained, ta, ka, tb, kb), mask)
    assert float(loss) == pytest.approx(best["val_loss"], rel=1e-4)
    assert float(loss) < 0.5 * float(loss_untrained)


def outputs_pair(model, ta, ka, tb, kb):
    return model(ta, ka), model(tb, kb)


def test_training_is_seeded(scenes, tmp_path):
    runs = [
        train_encoder(scenes, tmp_path / f"{i}.pth", "test", TrainConf(epochs=2, batch_size=16, out_dim=OUT),
                      device="cpu")
        for i in range(2)
    ]
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in runs]
    assert strip[0] == strip[1]


def test_training_checks_its_inputs(scenes, tmp_path):
    with pytest.raises(ValueError, match=r"32-d tokens but backbone dense_sift gives 128-d"):
        train_encoder(scenes, tmp_path / "x.pth", "dense_sift", TrainConf(epochs=1))
    bad = tmp_path / "labels.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("names", data=np.array(["a"], dtype=h5py.string_dtype()))
        f.create_dataset("pairs", data=np.zeros((1, 2), np.int32))
    missing = r"labels.h5: not a labels cache \(missing \['bins', 'offsets', 'positives'\]\)"
    with pytest.raises(ValueError, match=missing):
        read_labels(bad)
    assert not (tmp_path / "x.pth").exists()


# --- checkpoints -------------------------------------------------------------------------------------


def outputs(model, seed=1):
    tokens, kp = model_inputs(seed=seed)
    with torch.no_grad():
        return model.eval()(tokens, kp)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VOPEncoder(DIM, OUT, hidden_dims=[48, 40], dropout=0.2)
    path = save_encoder(model, tmp_path / "vop.pth", "test", [{"epoch": 1, "train_loss": 0.5}])
    loaded = load_encoder(path, "test")
    assert loaded.config == model.config and loaded.backbone == "test" and not loaded.training
    torch.testing.assert_close(outputs(loaded), outputs(model), rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained on test tokens but the backbone is other"):
        load_encoder(path, "other")


def gluefactory_checkpoint(model, prefix="matcher."):
    """A full overlap model's checkpoint as glue-factory writes it, the encoder under `prefix`."""
    state = {f"{prefix}{k}": v.clone() for k, v in model.state_dict().items()}
    state[f"{prefix}self_attn.0.Wq.weight"] = torch.zeros(OUT, OUT)  # the matcher's other layers
    state[f"{prefix}logits.weight"] = torch.zeros(1, OUT)
    state["extractor.x"] = torch.zeros(3)
    return {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "conf": {"model": {"name": "overlap_predictor", "input_dim": DIM}},
        "epoch": 7,
        "losses": {"total": np.float64(0.25), "local_pos": np.float32(0.1)},  # numpy scalars, as logged
    }


@pytest.mark.parametrize(
    "prefix, keypoint_dropout", [("matcher.", False), ("module.model.matcher.", True), ("", False)]
)
def test_gluefactory_import(tmp_path, prefix, keypoint_dropout):
    torch.manual_seed(0)
    model = VOPEncoder(DIM, OUT, dropout=0.1, keypoint_dropout=keypoint_dropout)
    path = tmp_path / "checkpoint_best.tar"
    checkpoint = gluefactory_checkpoint(model, prefix)
    torch.save(checkpoint if prefix else checkpoint["model"], path)  # also a bare state dict
    loaded = load_encoder(path)
    assert loaded.config["in_dim"] == DIM and loaded.config["out_dim"] == OUT
    assert loaded.config["keypoint_dropout"] == keypoint_dropout
    torch.testing.assert_close(outputs(loaded), outputs(model), rtol=0, atol=0)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("matcher.keypoint_encoder.3.bias"), r"missing keys \['keypoint_encoder.3.bias'\]"),
        (
            lambda s: s.__setitem__("matcher.keypoint_encoder.9.weight", torch.zeros(OUT, OUT)),
            r"unexpected keys \['keypoint_encoder.9.weight'\]",
        ),
        (
            lambda s: s.__setitem__("matcher.input_proj.bias", torch.zeros(OUT - 1)),
            r"input_proj.bias: \(63,\) in the file, \(64,\) expected",
        ),
        (
            lambda s: s.__setitem__("matcher.keypoint_encoder.3.weight", torch.zeros(OUT + 1, 2 * OUT)),
            r"keypoint_encoder.3.weight: \(65, 128\) in the file, \(64, 128\) expected",
        ),
        (lambda s: s.pop("matcher.input_proj.weight"), r"missing encoder key input_proj.weight"),
    ],
)
def test_gluefactory_import_refuses_bad_files(tmp_path, edit, message):
    checkpoint = gluefactory_checkpoint(VOPEncoder(DIM, OUT))
    edit(checkpoint["model"])
    path = tmp_path / "bad.tar"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=message) as err:
        load_encoder(path)
    assert str(path) in str(err.value)


def test_import_checks_the_backbone(tmp_path):
    path = tmp_path / "vop_vitl.tar"
    torch.save({"model": {f"matcher.{k}": v for k, v in VOPEncoder(1024).state_dict().items()}}, path)
    assert load_encoder(path, "dinov2_vitl14").in_dim == 1024
    with pytest.raises(
        ValueError, match=r"checkpoint expects 1024-d tokens \(dinov2_vitl14\) but the backbone is dense_sift \(128-d\)"
    ):
        load_encoder(path, "dense_sift")


def test_import_refuses_files_without_an_encoder(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"backbone.conv.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="no VOP encoder weights found"):
        load_encoder(path)
    with pytest.raises(FileNotFoundError, match="missing.pth: encoder checkpoint not found"):
        load_encoder(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable torch checkpoint"):
        load_encoder(tmp_path / "junk.pth")


def test_weights_only_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "hook": logging.Logger}, path)  # any class outside the allowlist
    refused = r"evil.pth: .*weights_only=True\) refuses to load \(the global logging.Logger\)"
    with pytest.raises(ValueError, match=refused):
        load_encoder(path)


@pytest.mark.parametrize("message, named", [
    # torch 2.13's wording, colours and all
    ("Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those "
     "steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) ...\n\tWeightsUnpickler error: "
     "Unsupported global: GLOBAL omegaconf.dictconfig.DictConfig was not an allowed global by default. Please "
     "use `torch.serialization.add_safe_globals([omegaconf.dictconfig.DictConfig])` ...",
     "the global omegaconf.dictconfig.DictConfig"),
    # the global named another way, on another line than the first
    ("Weights only load failed.\nThe global `collections.Counter` is not allowed", "the global collections.Counter"),
    # no global at all: the unpickler's own line
    ("Weights only load failed. Re-running ...\n\tWeightsUnpickler error: Unsupported operand 149\n\nCheck the "
     "documentation", "Unsupported operand 149"),
    ("Weights only load failed.\nSomething unexpected happened here.", "Something unexpected happened here"),
])
def test_refused_checkpoint_names_what_was_refused(tmp_path, monkeypatch, message, named):
    path = tmp_path / "model.pt"
    torch.save({"model": {}}, path)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError(message)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError) as info:
        load_encoder(path)
    assert f"refuses to load ({named}). If you trust the file" in str(info.value)
    assert "\x1b" not in str(info.value)


# --- applying the encoder ----------------------------------------------------------------------------


def read_all(path):
    with h5py.File(path, "r") as f:
        return {n: {k: f[n][k][()] for k in f[n]} for n in io.list_h5_names(path)}


def test_apply_vop_encoder(scenes, tmp_path):
    torch.manual_seed(0)
    model = VOPEncoder(DIM, OUT)
    ckpt = save_encoder(model, tmp_path / "vop.pth", "test")
    out = tmp_path / "embeddings-vop.h5"
    apply_encoder(scenes[0][0], out, EncoderConf(type="vop", checkpoint=str(ckpt), batch_size=4), device="cpu")
    features, embeddings = read_all(scenes[0][0]), read_all(out)
    assert sorted(embeddings) == sorted(features)
    names = sorted(features)
    tokens = torch.from_numpy(np.stack([features[n]["patch_descriptors"] for n in names]))
    kp = torch.from_numpy(np.stack([features[n]["keypoints"] for n in names]))
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.eval()(tokens, kp), dim=-1).numpy()
    for i, n in enumerate(names):
        e = embeddings[n]
        assert set(e) == {"global_descriptor", "patch_descriptors", "keypoints", "image_size"}
        assert e["patch_descriptors"].shape == (256, OUT) and e["patch_descriptors"].dtype == np.float16
        np.testing.assert_allclose(np.linalg.norm(e["patch_descriptors"].astype(np.float32), axis=1), 1, atol=2e-3)
        np.testing.assert_allclose(e["patch_descriptors"], want[i], atol=2e-3)
        g = features[n]["global_descriptor"]
        np.testing.assert_allclose(e["global_descriptor"], g / np.linalg.norm(g), rtol=1e-6)
        np.testing.assert_array_equal(e["keypoints"], features[n]["keypoints"])
        np.testing.assert_array_equal(e["image_size"], features[n]["image_size"])


def test_apply_checks_the_encoder_entry(scenes, tmp_path):
    out = tmp_path / "e.h5"
    with pytest.raises(ValueError, match="needs a checkpoint"):
        apply_encoder(scenes[0][0], out, EncoderConf(type="vop"))
    ckpt = save_encoder(VOPEncoder(48, OUT), tmp_path / "wide.pth", None)
    with pytest.raises(ValueError, match=r"features-s0.h5: patch tokens of shape \(256, 32\) .* expects 48-d tokens"):
        apply_encoder(scenes[0][0], out, EncoderConf(type="vop"), checkpoint=ckpt)
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_cli(scenes, tmp_path):
    ckpt = tmp_path / "vop.pth"
    args = ["--scene", *map(str, scenes[0]), "--scene", *map(str, scenes[1])]
    assert vop_main(["train", *args, "--backbone", "test", "--out", str(ckpt), "--epochs", "1", "--out-dim", str(OUT),
                     "--history", str(tmp_path / "log.csv")]) == 0
    assert ckpt.is_file() and (tmp_path / "log.csv").is_file()
    assert vop_main(["embeddings", "--features", str(scenes[1][0]), "--out", str(tmp_path / "vop.h5"), "--type", "vop",
                     "--checkpoint", str(ckpt)]) == 0
    assert vop_main(["embeddings", "--features", str(scenes[1][0]), "--out", str(tmp_path / "id.h5"),
                     "--type", "identity"]) == 0
    vop_e, id_e = read_all(tmp_path / "vop.h5"), read_all(tmp_path / "id.h5")
    name = next(iter(vop_e))
    assert vop_e[name]["patch_descriptors"].shape == (256, OUT)
    assert id_e[name]["patch_descriptors"].shape == (256, DIM)
