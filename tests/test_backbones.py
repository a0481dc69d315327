"""Backbones: the interface, DINOv2 weight loading/conversion (tiny configs, offline), dense_sift."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from vop.backbones import BACKBONES, load_backbone
from vop.backbones.dense_sift import DenseSift, pool_global
from vop.backbones.dinov2 import (
    Dinov2Backbone,
    fb_to_hf_state_dict,
    hf_to_fb_state_dict,
    load_dinov2,
    random_dinov2,
)
from vop.utils import root_sift

NAME = "dinov2_vits14"  # the tiny configs stand in for its architecture


def tiny_config(swiglu: bool = False, image_size: int = 224) -> Dinov2Config:
    return Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, use_swiglu_ffn=swiglu,
        image_size=image_size, patch_size=14, layerscale_value=0.5,
    )


def tiny_backbone(swiglu: bool = False, image_size: int = 224, seed: int = 0) -> Dinov2Backbone:
    config = tiny_config(swiglu, image_size)
    model = random_dinov2(NAME, seed, config)
    with torch.no_grad():  # non-trivial norms and layer scales, so the conversion test sees them
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return Dinov2Backbone(NAME, model, "test")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def fb_vit_forward(fb: dict[str, torch.Tensor], images: torch.Tensor, heads: int):
    """The official ViT's forward, written from the facebookresearch/dinov2 keys (no interpolation)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = F.conv2d((images - mean) / std, fb["patch_embed.proj.weight"], fb["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([fb["cls_token"].expand(len(x), -1, -1), x], dim=1) + fb["pos_embed"]
    B, N, C = x.shape
    blocks = sorted({int(k.split(".")[1]) for k in fb if k.startswith("blocks.")})
    for i in blocks:
        p = f"blocks.{i}."
        h = F.layer_norm(x, (C,), fb[p + "norm1.weight"], fb[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, fb[p + "attn.qkv.weight"], fb[p + "attn.qkv.bias"]).reshape(B, N, 3, heads, C // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        x = x + fb[p + "ls1.gamma"] * F.linear(a, fb[p + "attn.proj.weight"], fb[p + "attn.proj.bias"])
        h = F.layer_norm(x, (C,), fb[p + "norm2.weight"], fb[p + "norm2.bias"], eps=1e-6)
        if p + "mlp.w12.weight" in fb:  # SwiGLU: silu(first half) * second half
            x1, x2 = F.linear(h, fb[p + "mlp.w12.weight"], fb[p + "mlp.w12.bias"]).chunk(2, dim=-1)
            h = F.linear(F.silu(x1) * x2, fb[p + "mlp.w3.weight"], fb[p + "mlp.w3.bias"])
        else:
            h = F.linear(F.gelu(F.linear(h, fb[p + "mlp.fc1.weight"], fb[p + "mlp.fc1.bias"])),
                         fb[p + "mlp.fc2.weight"], fb[p + "mlp.fc2.bias"])
        x = x + fb[p + "ls2.gamma"] * h
    x = F.layer_norm(x, (C,), fb["norm.weight"], fb["norm.bias"], eps=1e-6)
    return x[:, 0], x[:, 1:]


# --- interface -------------------------------------------------------------------------------------


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match="dense_sift.*dinov2_vitg14"):
        load_backbone("resnet50")


def test_load_backbone_dense_sift_interface(images):
    backbone = load_backbone("dense_sift", device="cpu")
    assert (backbone.name, backbone.dim, backbone.image_size, backbone.patch_size, backbone.grid) == (
        "dense_sift", 128, 224, 14, 16,
    )
    assert not backbone.training
    g, p = backbone(images)
    assert g.shape == (3, 128) and p.shape == (3, 256, 128)
    with pytest.raises(ValueError, match=r"\(B,3,224,224\)"):
        backbone(torch.rand(1, 3, 100, 100))


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """No DINOv2 weights in the Hugging Face or torch.hub caches, also on machines that have them cached; the
    Hugging Face loader must not reach for the network."""
    def not_cached(*args, **kwargs):
        assert kwargs.get("local_files_only"), "must not reach for the network"
        raise OSError("not in the cache")

    monkeypatch.setattr(Dinov2Model, "from_pretrained", not_cached)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def test_dinov2_without_weights_says_how_to_get_them(empty_caches, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dinov2_vits14_pretrain\.pth.*backbones\.dinov2_vits14\.weights"):
        load_dinov2(NAME)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dinov2(NAME, tmp_path / "missing.pth")


def test_dinov2_auto_weights_download_into_the_hub_cache_once(empty_caches, monkeypatch, tmp_path):
    from test_download import ArchiveServer

    from vop.backbones import dinov2

    reference = tiny_backbone(seed=3)
    torch.save(hf_to_fb_state_dict(reference.model.state_dict()), tmp_path / "official.pth")
    with ArchiveServer() as server:
        server.files[f"{NAME}_pretrain.pth"] = (tmp_path / "official.pth").read_bytes()
        monkeypatch.setattr(dinov2, "checkpoint_url", lambda name: f"{server.url}/{name}_pretrain.pth")
        first = load_dinov2(NAME, "auto", config=tiny_config())
        again = load_dinov2(NAME, "auto", config=tiny_config())  # now from the hub cache
        assert len(server.requests) == 1
    assert (tmp_path / "hub" / "checkpoints" / f"{NAME}_pretrain.pth").is_file()
    assert "torch hub cache" in again.source and first.source.endswith(f"{NAME}_pretrain.pth")
    x = torch.rand(2, 3, 224, 224)
    for loaded in (first, again):
        torch.testing.assert_close(loaded(x)[1], reference(x)[1], rtol=1e-4, atol=1e-4)
    # No server: the error says what was tried, why the download failed, and where to put the file.
    (tmp_path / "hub" / "checkpoints" / f"{NAME}_pretrain.pth").unlink()
    monkeypatch.setattr(dinov2, "checkpoint_url", lambda name: "http://127.0.0.1:9/x.pth")
    with pytest.raises(FileNotFoundError, match=r"Hugging Face cache has no .* torch hub cache no .*download failed.*"
                                                r"no network.*put it at .*checkpoints/dinov2_vits14_pretrain\.pth"):
        load_dinov2(NAME, "auto", config=tiny_config())


# --- DINOv2 ----------------------------------------------------------------------------------------


def test_dinov2_outputs_come_from_the_final_layernorm(images):
    backbone = tiny_backbone()
    assert backbone.dim == 32
    g, p = backbone(images)
    assert g.shape == (3, 32) and p.shape == (3, 256, 32)
    x = (images - backbone.mean) / backbone.std
    hidden = backbone.model(pixel_values=x, output_hidden_states=True).hidden_states[-1]  # before the norm
    normed = backbone.model.layernorm(hidden)
    torch.testing.assert_close(g, normed[:, 0])
    torch.testing.assert_close(p, normed[:, 1:])


def test_dinov2_random_weights_are_seeded():
    a = random_dinov2(NAME, 3, tiny_config()).state_dict()
    b = random_dinov2(NAME, 3, tiny_config()).state_dict()
    c = random_dinov2(NAME, 4, tiny_config()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embeddings.cls_token"], c["embeddings.cls_token"])


def test_dinov2_hf_folder_round_trip(tmp_path, images):
    backbone = tiny_backbone()
    backbone.model.save_pretrained(tmp_path / "hf")
    loaded = load_dinov2(NAME, tmp_path / "hf", config=tiny_config())
    for a, b in zip(backbone(images), loaded(images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match dinov2_vits14: hidden_size=32"):
        load_dinov2(NAME, tmp_path / "hf")  # the official architecture is expected by default


@pytest.mark.parametrize("swiglu", [False, True])
def test_dinov2_fb_checkpoint_matches_the_official_forward(tmp_path, images, swiglu):
    backbone = tiny_backbone(swiglu)
    fb = hf_to_fb_state_dict(backbone.model.state_dict())
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.ls2.gamma", "norm.weight"} <= set(fb)
    assert ("blocks.0.mlp.w12.weight" in fb) == swiglu
    # Independent check of the key mapping: the official forward on the fb keys gives the same tokens.
    for a, b in zip(fb_vit_forward(fb, images, heads=2), backbone(images)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # and fb -> hf inverts hf -> fb exactly
    back = fb_to_hf_state_dict(fb)
    assert back.keys() == backbone.model.state_dict().keys()

    torch.save(fb, tmp_path / "fb.pth")
    loaded = load_dinov2(NAME, tmp_path / "fb.pth", config=tiny_config(swiglu))
    for a, b in zip(backbone(images), loaded(images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dinov2_fb_checkpoint_interpolates_518_position_embeddings(tmp_path, images):
    backbone = tiny_backbone(image_size=518)  # 37x37 positions, like the released checkpoints
    fb = hf_to_fb_state_dict(backbone.model.state_dict())
    del fb["mask_token"]  # absent from some checkpoints
    torch.save({"teacher": {f"backbone.{k}": v for k, v in fb.items()}}, tmp_path / "train.pth")
    loaded = load_dinov2(NAME, tmp_path / "train.pth", config=tiny_config(image_size=224))
    assert loaded.model.config.image_size == 518
    for a, b in zip(backbone(images), loaded(images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dinov2_bad_fb_checkpoint_errors_name_file_and_backbone(tmp_path):
    fb = hf_to_fb_state_dict(tiny_backbone().model.state_dict())
    wrong_shape = dict(fb, **{"blocks.0.attn.qkv.weight": torch.zeros(90, 32)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape\.pth: not a facebookresearch/dinov2 dinov2_vits14.*mismatch.*qkv"):
        load_dinov2(NAME, tmp_path / "shape.pth", config=tiny_config())
    missing = {k: v for k, v in fb.items() if k != "norm.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*1 missing keys.*norm\.weight"):
        load_dinov2(NAME, tmp_path / "missing.pth", config=tiny_config())
    torch.save(dict(fb, register_tokens=torch.zeros(1, 4, 32)), tmp_path / "reg.pth")
    with pytest.raises(ValueError, match="unexpected keys.*register_tokens.*not supported"):
        load_dinov2(NAME, tmp_path / "reg.pth", config=tiny_config())
    torch.save(tiny_backbone().model.state_dict(), tmp_path / "hf.pth")
    with pytest.raises(ValueError, match=r"hf\.pth: this is a Hugging Face"):
        load_dinov2(NAME, tmp_path / "hf.pth", config=tiny_config())
    torch.save(fb, tmp_path / "tiny.pth")  # the default expects the real vits14
    with pytest.raises(ValueError, match=r"tiny\.pth: not a .* dinov2_vits14 checkpoint.*width 32"):
        load_dinov2(NAME, tmp_path / "tiny.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth: cannot read"):
        load_dinov2(NAME, tmp_path / "junk.pth")


def test_dinov2_batch_invariance(images):
    backbone = tiny_backbone()
    g, p = backbone(images)
    g1, p1 = backbone(images[1:2])
    torch.testing.assert_close(g1, g[1:2], rtol=0, atol=1e-5)
    torch.testing.assert_close(p1, p[1:2], rtol=0, atol=1e-5)


# --- dense_sift ------------------------------------------------------------------------------------


def textured_image(seed: int = 0, size: int = 224 + 14) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 2.0)
    return (noise - noise.min()) / np.ptp(noise)


def to_batch(*grays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.repeat(g[None], 3, 0) for g in grays])).float()


def test_dense_sift_translation_by_one_cell_shifts_the_grid():
    big = textured_image()
    image, shifted = big[:224, :224], big[:224, 14:238]  # content moves one cell to the left
    _, p = DenseSift()(to_batch(image, shifted))
    grid = p.reshape(2, 16, 16, 128)
    # cell (r, c+1) of the original is cell (r, c) of the shifted image; compare away from borders
    torch.testing.assert_close(grid[1, 1:15, 1:14], grid[0, 1:15, 2:15], rtol=0, atol=1e-6)
    assert not torch.allclose(grid[1, 1:15, 1:14], grid[0, 1:15, 1:14])


def test_dense_sift_is_root_sift():
    image = textured_image(1)[:224, :224].copy()
    image[:, :112] = 0.5  # a flat half: empty cells
    _, p = DenseSift()(to_batch(image))
    p = p[0].reshape(16, 16, 128)
    assert (p >= 0).all()
    norms = p.norm(dim=-1)
    torch.testing.assert_close(norms[:, 9:], torch.ones(16, 7), rtol=0, atol=1e-5)  # textured cells
    assert (norms[:, :7] == 0).all()  # flat cells: zero descriptors, not NaN
    assert torch.isfinite(p).all()
    x = np.random.default_rng(0).random((5, 128)).astype(np.float32)
    np.testing.assert_allclose((root_sift(x) ** 2).sum(-1), 1, rtol=1e-6)


def test_dense_sift_global_descriptor_separates_textures():
    def stripes(angle, seed):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:224, :224]
        s = np.sin(0.4 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.random() * 6)
        return ((s + 0.3 * rng.standard_normal(s.shape) + 2) / 4).clip(0, 1).astype(np.float32)

    g, _ = DenseSift()(to_batch(stripes(0, 0), stripes(0, 1), stripes(np.pi / 2, 2), textured_image(3)[:224, :224]))
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(4))
    sim = g @ g.T
    assert sim[0, 1] > 0.8 and sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3


def test_dense_sift_batch_invariance_and_pooling():
    batch = to_batch(*(textured_image(s)[:224, :224] for s in range(3)))
    g, p = DenseSift(num_threads=2)(batch)
    g1, p1 = DenseSift(num_threads=1)(batch[2:])
    assert torch.equal(p1[0], p[2]) and torch.equal(g1[0], g[2])
    torch.testing.assert_close(pool_global(p), g)


def test_backbone_names_are_complete():
    assert BACKBONES == ("dense_sift", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
