"""DINOv2 (facebookresearch/dinov2) as a frozen backbone, run through transformers' Dinov2Model.

At 224 px a ViT-*/14 sees a 16x16 grid: the CLS token is the global descriptor and the 256 patch
tokens are the patch descriptors, both after the final layer norm (what the official model calls
`x_norm_clstoken` / `x_norm_patchtokens`, and what the VOP reference uses).

Where the weights come from (`weights`, config key `backbones.<name>.weights`):
  a folder     Hugging Face format (config.json + model.safetensors or pytorch_model.bin), read offline;
  a file       the official checkpoint (e.g. dinov2_vits14_pretrain.pth), converted to Dinov2Model keys;
  "hf"         Dinov2Model.from_pretrained("facebook/dinov2-..."), network or Hugging Face cache;
  "hub"        torch.hub.load("facebookresearch/dinov2", name), network or torch hub cache;
  "random"     seeded random weights of the right shape, for offline tests and demos;
  None         the Hugging Face cache, then the torch hub cache, never the network;
  "auto"       (the default) the two caches, then the official checkpoint downloaded into the torch hub
               cache (resumable, size-checked, vop.download), so a machine with network needs no edit.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from . import DINOV2_ARCHS, Backbone

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 14
PRETRAIN_IMAGE_SIZE = 518  # the official checkpoints hold 37x37 position embeddings


ARCHS = DINOV2_ARCHS

# What must agree between a checkpoint's architecture and the backbone asked for.
_ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "use_swiglu_ffn", "mlp_ratio", "patch_size")


def checkpoint_url(name: str) -> str:
    return f"https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"


def hub_cache_checkpoint(name: str) -> Path:
    """Where torch.hub keeps the official checkpoint once `torch.hub.load` has downloaded it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{name}_pretrain.pth"


def how_to_provide_weights(name: str) -> str:
    arch = ARCHS[name]
    return (
        f"provide weights for {name} in one of these ways: "
        f"(1) download {checkpoint_url(name)} and set `backbones.{name}.weights` in config/config.yaml "
        f"(or --weights) to that .pth file; "
        f"(2) on a machine with network run `Dinov2Model.from_pretrained('{arch.hf_id}').save_pretrained(DIR)` "
        f"and set `backbones.{name}.weights` to DIR; "
        f"(3) set it to 'hf' or 'hub' where this machine can download; "
        f"('random' gives untrained weights for tests only)"
    )


def dinov2_config(name: str, image_size: int = PRETRAIN_IMAGE_SIZE) -> Dinov2Config:
    """The Dinov2Config of an official backbone (image_size only sizes the position embeddings)."""
    if name not in ARCHS:
        raise ValueError(f"unknown DINOv2 backbone {name!r}: expected one of {', '.join(ARCHS)}")
    arch = ARCHS[name]
    return Dinov2Config(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        use_swiglu_ffn=arch.use_swiglu_ffn,
        mlp_ratio=4,
        image_size=image_size,
        patch_size=PATCH_SIZE,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


class Dinov2Backbone(Backbone):
    """Wraps a Dinov2Model (or the torch.hub model) behind the Backbone interface."""

    def __init__(self, name: str, model: nn.Module, source: str):
        is_hub_model = not isinstance(model, Dinov2Model)
        dim = model.embed_dim if is_hub_model else model.config.hidden_size
        super().__init__(name, dim)
        self.model = model
        self.source = source
        self._is_hub_model = is_hub_model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        x = (images.to(self.device, torch.float32) - self.mean) / self.std
        if self._is_hub_model:
            tokens = self.model.forward_features(x)
            cls, patches = tokens["x_norm_clstoken"], tokens["x_norm_patchtokens"]
        else:
            hidden = self.model(pixel_values=x).last_hidden_state  # after the final layernorm
            cls, patches = hidden[:, 0], hidden[:, 1:]
        if patches.shape[1] != self.num_patches:
            raise RuntimeError(
                f"{self.name} ({self.source}): got {patches.shape[1]} patch tokens, expected {self.num_patches}; "
                "models with register tokens are not supported"
            )
        return cls.float(), patches.float()

    def extra_repr(self) -> str:
        return f"name={self.name}, dim={self.dim}, source={self.source}"


# ---------------------------------------------------------------------------------------------------
# facebookresearch/dinov2 <-> transformers key conversion

# Per block: official module -> Dinov2Model module (current transformers naming).
_BLOCK_RENAMES = {
    "norm1": "norm1",
    "attn.proj": "attention.o_proj",
    "ls1": "layer_scale1",  # parameter gamma -> lambda1
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w3": "mlp.down_proj",
    "ls2": "layer_scale2",
}
# Per block: official fused tensors -> the Dinov2Model tensors they split into (along dim 0).
_BLOCK_SPLITS = {
    "attn.qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    "mlp.w12": ("mlp.gate_proj", "mlp.up_proj"),  # SwiGLU (vitg14): first half gates, second half is the value
}
_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# transformers < 5 names some tensors differently; converted on the way in and out.
_LEGACY_HF_RENAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}
_OPTIONAL_FB_KEYS = {"mask_token"}  # only used for masked pretraining; absent from some checkpoints

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$")
_CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def _unchunk(key: str) -> str:
    # Checkpoints saved with block_chunks > 0 name blocks "blocks.<chunk>.<index>.": keep the global index.
    m = _CHUNKED_BLOCK_KEY.match(key)
    return f"blocks.{m.group(1)}.{m.group(2)}" if m else key


def fb_to_hf_state_dict(fb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official facebookresearch/dinov2 keys -> Dinov2Model keys; unknown keys pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in fb.items():
        key = _unchunk(key)
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        m = _BLOCK_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        index, module, param = m.groups()
        prefix = f"encoder.layer.{index}."
        if module in _BLOCK_SPLITS:
            targets = _BLOCK_SPLITS[module]
            if value.shape[0] % len(targets):
                out[key] = value  # reported as a shape mismatch by the caller
                continue
            for target, part in zip(targets, value.chunk(len(targets), dim=0)):
                out[f"{prefix}{target}.{param}"] = part
        elif module in _BLOCK_RENAMES:
            hf_param = "lambda1" if param == "gamma" else param
            out[f"{prefix}{_BLOCK_RENAMES[module]}.{hf_param}"] = value
        else:
            out[key] = value
    return out


def hf_to_fb_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dinov2Model keys (either transformers naming) -> official facebookresearch/dinov2 keys."""
    hf = _from_legacy_hf(hf)
    top = {v: k for k, v in _TOP_RENAMES.items()}
    block = {v: k for k, v in _BLOCK_RENAMES.items()}
    split_parts = {part: (fused, i) for fused, parts in _BLOCK_SPLITS.items() for i, part in enumerate(parts)}
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, list] = {}  # fused key -> its parts in order
    for key, value in hf.items():
        if key in top:
            out[top[key]] = value
            continue
        m = _LAYER_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        index, module, param = m.groups()
        fb_param = "gamma" if param == "lambda1" else param
        if module in split_parts:
            fused, i = split_parts[module]
            fused_key = f"blocks.{index}.{fused}.{fb_param}"
            pending.setdefault(fused_key, [None] * len(_BLOCK_SPLITS[fused]))[i] = value
        elif module in block:
            out[f"blocks.{index}.{block[module]}.{fb_param}"] = value
        else:
            out[key] = value
    for fused_key, parts in pending.items():
        if any(p is None for p in parts):
            raise ValueError(f"cannot fuse {fused_key}: some of its parts are missing")
        out[fused_key] = torch.cat(parts, dim=0)
    return out


def _from_legacy_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    back = {v: k for k, v in _LEGACY_HF_RENAMES.items()}
    out = {}
    for key, value in sd.items():
        for old, new in back.items():
            if f".{old}." in key:
                key = key.replace(f".{old}.", f".{new}.")
                break
        if ".mlp.weights_in." in key:  # legacy fused SwiGLU input
            gate, up = value.chunk(2, dim=0)
            out[key.replace(".mlp.weights_in.", ".mlp.gate_proj.")] = gate
            out[key.replace(".mlp.weights_in.", ".mlp.up_proj.")] = up
            continue
        out[key] = value
    return out


def _to_installed_naming(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename current-naming keys to the naming of the installed transformers (legacy before v5)."""
    model_keys = model.state_dict().keys()
    if not any(".attention.attention.query." in k for k in model_keys):
        return sd
    out = {}
    for key, value in sd.items():
        for new, old in _LEGACY_HF_RENAMES.items():
            if f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                break
        out[key] = value
    for key in [k for k in out if ".mlp.gate_proj." in k]:
        up_key = key.replace(".mlp.gate_proj.", ".mlp.up_proj.")
        out[key.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = torch.cat([out.pop(key), out.pop(up_key)])
    return out


# ---------------------------------------------------------------------------------------------------
# loading


def _guess_arch(fb: dict[str, torch.Tensor]) -> str:
    cls = fb.get("cls_token")
    if cls is None:
        return "no cls_token: not a DINOv2 ViT state dict"
    blocks = {int(m.group(1)) for k in fb if (m := _BLOCK_KEY.match(k))}
    swiglu = any(".mlp.w12." in k for k in fb)
    for name, arch in ARCHS.items():
        if (arch.hidden_size, arch.num_hidden_layers, arch.use_swiglu_ffn) == (cls.shape[-1], len(blocks), swiglu):
            return f"it looks like {name}"
    return f"it holds a ViT with width {cls.shape[-1]} and {len(blocks)} blocks"


def _unwrap_checkpoint(obj, path: Path) -> dict[str, torch.Tensor]:
    """The model's state dict, also out of training checkpoints ({'model': ...}, {'teacher': ...})."""
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    sd = {}
    for key, value in obj.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        sd[key] = value
    return sd


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise ValueError(
            f"{path}: cannot read it as a {name} checkpoint ({type(e).__name__}: {e}); "
            f"expected the official {checkpoint_url(name)}"
        ) from e
    return _unwrap_checkpoint(obj, path)


def _model_on_meta(config: Dinov2Config) -> Dinov2Model:
    # Skip the random initialisation of every parameter: they are all replaced by the checkpoint's.
    with torch.device("meta"):
        return Dinov2Model(config)


def load_fb_checkpoint(path: str | Path, name: str, config: Dinov2Config | None = None) -> Dinov2Model:
    """A Dinov2Model from an official facebookresearch/dinov2 state dict (.pth/.pt, or .safetensors).

    `config` defaults to the official architecture of `name`; the position-embedding grid is taken
    from the file (518 px for the released checkpoints), the model interpolates it to 224 px.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file; {how_to_provide_weights(name)}")
    fb = {_unchunk(k): v for k, v in _read_state_dict(path, name).items()}
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in fb):
        raise ValueError(
            f"{path}: this is a Hugging Face (transformers) state dict, not a facebookresearch/dinov2 one; "
            f"set `backbones.{name}.weights` to the folder that holds it and its config.json"
        )
    config = Dinov2Config.from_dict(config.to_dict()) if config is not None else dinov2_config(name)
    pos = fb.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1:
            config.image_size = side * config.patch_size
    model = _model_on_meta(config)
    expected = {k: tuple(v.shape) for k, v in hf_to_fb_state_dict(model.state_dict()).items()}

    missing = sorted(set(expected) - set(fb) - _OPTIONAL_FB_KEYS)
    unexpected = sorted(set(fb) - set(expected))
    mismatched = [
        f"{k}: file {tuple(fb[k].shape)} vs expected {expected[k]}"
        for k in sorted(set(fb) & set(expected))
        if tuple(fb[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            hint = " (checkpoints with register tokens, *_reg, are not supported)" if "register_tokens" in fb else ""
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}){hint}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
        raise ValueError(
            f"{path}: not a facebookresearch/dinov2 {name} checkpoint ({_guess_arch(fb)}): "
            f"{'; '.join(problems)}. Use {checkpoint_url(name)} or pick the backbone that matches the file"
        )

    hf = {k: v.float() if v.is_floating_point() else v for k, v in fb_to_hf_state_dict(fb).items()}
    if "embeddings.mask_token" in model.state_dict() and "embeddings.mask_token" not in hf:
        hf["embeddings.mask_token"] = torch.zeros(model.embeddings.mask_token.shape)
    model.load_state_dict(_to_installed_naming(hf, model), strict=True, assign=True)
    return model.eval()


def _check_arch(config, expected: Dinov2Config, source: str, name: str) -> None:
    diffs = [
        f"{f}={getattr(config, f, None)!r} (expected {getattr(expected, f)!r})"
        for f in _ARCH_FIELDS
        if getattr(config, f, None) != getattr(expected, f)
    ]
    if diffs:
        raise ValueError(
            f"{source}: its architecture does not match {name}: {', '.join(diffs)}; "
            f"point `backbones.{name}.weights` at {name} weights or rename the backbone"
        )


def load_hf_folder(folder: str | Path, name: str, config: Dinov2Config | None = None) -> Dinov2Model:
    """A Dinov2Model from a local Hugging Face folder (save_pretrained output), never the network."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder}: no config.json, so not a Hugging Face model folder; "
            f"{how_to_provide_weights(name)}"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"{config_file}: model_type is {model_type!r}, expected 'dinov2' for {name}")
    # Check the architecture before reading (possibly gigabytes of) weights.
    _check_arch(Dinov2Config.from_pretrained(folder), config or dinov2_config(name), str(folder), name)
    try:
        model, info = Dinov2Model.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except OSError as e:
        raise FileNotFoundError(f"{folder}: cannot load the model weights ({e}); {how_to_provide_weights(name)}") from e
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        raise ValueError(
            f"{folder}: incomplete {name} weights: missing {sorted(missing)[:3]}, mismatched {mismatched[:3]}; "
            "save the model again with save_pretrained"
        )
    return model.float().eval()


def random_dinov2(name: str, seed: int = 0, config: Dinov2Config | None = None) -> Dinov2Model:
    """Untrained weights of the right architecture, the same for the same seed (tests, offline demos)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Dinov2Model(config or dinov2_config(name)).eval()


def _from_caches(name: str, config: Dinov2Config | None = None) -> tuple[nn.Module, str] | None:
    """The weights from the local Hugging Face or torch hub cache, without touching the network."""
    hf_id = ARCHS[name].hf_id
    try:
        model = Dinov2Model.from_pretrained(hf_id, local_files_only=True)
        return model.float().eval(), f"hf cache {hf_id}"
    except OSError:
        pass
    checkpoint = hub_cache_checkpoint(name)
    if checkpoint.is_file():
        return load_fb_checkpoint(checkpoint, name, config), f"torch hub cache {checkpoint}"
    return None


def _download_checkpoint(name: str, tried: str, config: Dinov2Config | None) -> tuple[nn.Module, str]:
    """The official checkpoint fetched into the torch hub cache (where torch.hub would put it)."""
    from vop.download import DownloadError, download

    url, dest = checkpoint_url(name), hub_cache_checkpoint(name)
    try:
        download(url, dest)
    except DownloadError as err:
        raise FileNotFoundError(
            f"no weights for {name}: {tried}, and the download failed: {err}; or set `backbones.{name}.weights` "
            "in config/config.yaml to the .pth file wherever you put it"
        ) from err
    return load_fb_checkpoint(dest, name, config), f"{url} -> {dest}"


def load_dinov2(
    name: str, weights: str | Path | None = None, config: Dinov2Config | None = None, seed: int = 0
) -> Dinov2Backbone:
    """The DINOv2 backbone `name` with weights from `weights` (see the module docstring).

    `config` overrides the official architecture (tests use tiny ones); `seed` is for "random".
    """
    if name not in ARCHS:
        raise ValueError(f"unknown DINOv2 backbone {name!r}: expected one of {', '.join(ARCHS)}")
    if weights == "random":
        model, source = random_dinov2(name, seed, config), f"random (seed {seed})"
    elif weights == "hf":
        model = Dinov2Model.from_pretrained(ARCHS[name].hf_id).float().eval()
        source = ARCHS[name].hf_id
    elif weights == "hub":
        model, source = torch.hub.load("facebookresearch/dinov2", name).eval(), "torch.hub facebookresearch/dinov2"
    elif weights in (None, "auto"):
        found = _from_caches(name, config)
        tried = (f"the Hugging Face cache has no {ARCHS[name].hf_id} and the torch hub cache no "
                 f"{hub_cache_checkpoint(name)}")
        if found is None and weights == "auto":
            found = _download_checkpoint(name, tried, config)
        if found is None:
            raise FileNotFoundError(f"no weights for {name}: {tried}; {how_to_provide_weights(name)}")
        model, source = found
    else:
        path = Path(weights).expanduser()
        if path.is_dir():
            model, source = load_hf_folder(path, name, config), str(path)
        elif path.is_file():
            model, source = load_fb_checkpoint(path, name, config), str(path)
        else:
            raise FileNotFoundError(
                f"weights {str(weights)!r} for {name}: no such file or folder "
                f"(nor one of 'auto', 'hf', 'hub', 'random', null); {how_to_provide_weights(name)}"
            )
    logger.info("loaded %s from %s", name, source)
    return Dinov2Backbone(name, model, source)
