"""Encoders: map backbone patch tokens to the patch embeddings that VOP votes with.

`identity` L2-normalises the backbone tokens (the baseline without a trained head).
`vop` runs the trained encoder of the paper (`VOPEncoder`): a linear projection of the patch tokens
plus a learned encoding of the patch-centre position. Its checkpoint is either ours (`vop.training`)
or the published glue-factory one (the matcher's `input_proj` / `keypoint_encoder`).
The output keeps the keys of the features file (DESIGN.md, "embeddings").

    vop embeddings --features features.h5 --out embeddings.h5 --type vop --checkpoint vop.pth
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from vop import io
from vop.backbones import TOKEN_DIMS
from vop.conf import EncoderConf, TrainConf
from vop.grid import IMAGE_SIZE
from vop.progress import progress
from vop.utils import l2_normalize, resolve_device

logger = logging.getLogger(__name__)

ENCODERS = ("identity", "vop")


def _describe_dim(dim: int) -> str:
    names = [name for name, d in TOKEN_DIMS.items() if d == dim]
    return f"{dim}-d tokens ({names[0]})" if names else f"{dim}-d tokens (no known backbone)"


def check_backbone(in_dim: int, backbone: str | None, source: str | Path) -> None:
    """Raise if `backbone`'s tokens do not have the width `in_dim` that `source` expects."""
    if backbone is None or backbone not in TOKEN_DIMS or TOKEN_DIMS[backbone] == in_dim:
        return
    raise ValueError(
        f"{source}: checkpoint expects {_describe_dim(in_dim)} but the backbone is {backbone} "
        f"({TOKEN_DIMS[backbone]}-d); use the features of the backbone the encoder was trained on "
        f"or an encoder trained on {backbone}"
    )


def normalize_keypoints(keypoints: torch.Tensor, image_size: float = IMAGE_SIZE) -> torch.Tensor:
    """Pixel coordinates in the square resized image -> [-1, 1] (centre 0), as the VOP reference."""
    half = image_size / 2
    return (keypoints - half) / half


class VOPEncoder(nn.Module):
    """Patch embeddings of VOP: input_proj(tokens) + keypoint_encoder(normalised patch centres).

    The keypoint encoder has the layout of the published model (Linear, LayerNorm, GELU[, Dropout]
    per hidden layer, then Linear), so its glue-factory weights load under the same keys.
    `keypoint_dropout` inserts the Dropout of checkpoints trained with dropout inside that MLP.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = TrainConf.out_dim,
        hidden_dims: Sequence[int] | None = None,
        dropout: float = TrainConf.dropout,
        keypoint_dropout: bool = False,
    ):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be >= 1, got {in_dim} and {out_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        hidden_dims = [2 * out_dim] if hidden_dims is None else [int(h) for h in hidden_dims]
        self.config = {
            "in_dim": int(in_dim),
            "out_dim": int(out_dim),
            "hidden_dims": hidden_dims,
            "dropout": float(dropout),
            "keypoint_dropout": bool(keypoint_dropout),
        }
        self.input_proj = nn.Linear(in_dim, out_dim)
        layers: list[nn.Module] = []
        width = 2
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            if keypoint_dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.keypoint_encoder = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)  # no parameters: the state dict keys stay those of the paper

    @property
    def in_dim(self) -> int:
        return self.config["in_dim"]

    @property
    def out_dim(self) -> int:
        return self.config["out_dim"]

    def forward(self, tokens: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """tokens (B,N,C), keypoints (B,N,2) in 224-px pixels -> (B,N,out_dim), not normalised."""
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_dim:
            raise ValueError(f"expected tokens (B,N,{self.in_dim}), got {tuple(tokens.shape)}")
        if keypoints.shape != (*tokens.shape[:2], 2):
            raise ValueError(f"expected keypoints {(*tokens.shape[:2], 2)}, got {tuple(keypoints.shape)}")
        dtype = self.input_proj.weight.dtype
        position = normalize_keypoints(keypoints.to(dtype))
        shared_dropout = self.training and self.config["keypoint_dropout"]
        if len(position) > 1 and not shared_dropout and bool((position == position[:1]).all()):
            # Every image has the same patch grid: encode it once (the MLP dominates the cost otherwise).
            encoded = self.keypoint_encoder(position[:1]).expand(len(position), -1, -1)
        else:
            encoded = self.keypoint_encoder(position)
        return self.dropout(self.input_proj(tokens.to(dtype)) + encoded)


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def _safe_numpy_globals() -> list:
    """numpy scalars and dtypes, which glue-factory checkpoints carry in their logged losses.

    They rebuild plain numbers, no code; allowing them keeps torch.load(weights_only=True) usable.
    """
    allowed: list = [np.dtype]
    allowed += [cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    # Pickles name it after the numpy that wrote them: numpy.core (1.x) or numpy._core (2.x).
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    return allowed


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def refused_object(err: Exception) -> str:
    """What torch.load(weights_only=True) refused, from its long message, whatever torch's wording: the
    refused global ("GLOBAL logging.Logger") wherever it appears, else the line after "WeightsUnpickler
    error:", else the message's most specific line (ANSI colours dropped)."""
    text = _ANSI.sub("", str(err))
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global[ :`'\"]+([A-Za-z_][\w]*(?:\.[\w]+)+)", text)
    if found:
        return f"the global {found[1]}"
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if match:
        return match[1].split(" Please use")[0].strip().rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text).rstrip(".")


def load_checkpoint_file(path: str | Path) -> dict:
    """torch.load(weights_only=True) with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder checkpoint not found; train one (vop train) or fix the path")
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive; files of torch < 1.6 are a pickle (protocol 2: 0x80 0x02).
    if not zipfile.is_zipfile(path) and head != b"\x80\x02":
        raise ValueError(
            f"{path}: not a readable torch checkpoint (neither a zip archive nor a pickle); download or train it again"
        )
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: holds objects that torch.load(weights_only=True) refuses to load ({refused_object(err)}). "
            "If you trust the file, keep only its weights: "
            "torch.save({'model': torch.load(src, weights_only=False)['model']}, dst)"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({err}); download or train it again") from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a dict of tensors (a state dict or a checkpoint), got {type(data).__name__}"
        )
    return data


def _is_ours(data: dict) -> bool:
    return isinstance(data.get("config"), dict) and "in_dim" in data["config"] and "model" in data


_ENCODER_KEY = re.compile(r"^(?P<prefix>(?:.*?\.)?)(?P<key>(?:input_proj|keypoint_encoder)\..+)$")


def _find_encoder_state(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """The encoder tensors of a full model's state dict, with the model's prefix (e.g. `matcher.`) removed."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _ENCODER_KEY.match(key) if isinstance(key, str) else None
        if match and isinstance(value, torch.Tensor):
            found.setdefault(match["prefix"], {})[match["key"]] = value
    if not found:
        sample = list(state)[:5]
        raise ValueError(
            f"{path}: no VOP encoder weights found: expected keys ending in `input_proj.weight` and "
            f"`keypoint_encoder.*` (e.g. matcher.input_proj.weight), found e.g. {sample}; "
            "pass the VOP checkpoint of the overlap matcher"
        )
    if len(found) > 1:
        raise ValueError(
            f"{path}: encoder weights under several prefixes {sorted(found)}; "
            "keep the state dict of one model in the file"
        )
    return next(iter(found.values()))


def _infer_config(state: dict[str, torch.Tensor], path: Path) -> dict:
    """Model config from the tensor shapes: widths from input_proj, the MLP layout from its indices."""
    weight = state.get("input_proj.weight")
    if weight is None or weight.ndim != 2:
        shape = None if weight is None else tuple(weight.shape)
        raise ValueError(f"{path}: missing encoder key input_proj.weight (a 2-D (out_dim, in_dim) tensor), got {shape}")
    out_dim, in_dim = weight.shape
    # Walk the Sequential: Linear at i; a LayerNorm at i+1 makes it a hidden layer whose successor is
    # at i+3 (Linear, LayerNorm, GELU) or i+4 (with Dropout). Keys the walk misses are reported later.
    hidden: list[int] = []
    keypoint_dropout = False
    i = 0
    while True:
        linear = state.get(f"keypoint_encoder.{i}.weight")
        norm = state.get(f"keypoint_encoder.{i + 1}.weight")
        if linear is None or linear.ndim != 2 or norm is None or norm.ndim != 1:
            break
        hidden.append(int(linear.shape[0]))
        if f"keypoint_encoder.{i + 3}.weight" in state:
            i += 3
        elif f"keypoint_encoder.{i + 4}.weight" in state:
            i += 4
            keypoint_dropout = True
        else:
            break
    return {
        "in_dim": int(in_dim),
        "out_dim": int(out_dim),
        "hidden_dims": hidden or [2 * int(out_dim)],
        "keypoint_dropout": keypoint_dropout,
    }


def _load_strict(model: VOPEncoder, state: dict[str, torch.Tensor], path: Path, config: dict) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if shapes:
            problems.append(f"shape mismatches [{'; '.join(shapes)}]")
        raise ValueError(
            f"{path}: encoder weights do not fit the VOP encoder (in_dim={config['in_dim']}, "
            f"out_dim={config['out_dim']}, keypoint MLP 2->{'->'.join(map(str, config['hidden_dims']))}"
            f"->{config['out_dim']}): {', '.join(problems)}; expected exactly the keys {sorted(expected)}"
        )
    model.load_state_dict(state, strict=True)


def save_encoder(
    model: VOPEncoder,
    path: str | Path,
    backbone: str | None,
    history: Sequence[dict] = (),
    state: dict[str, torch.Tensor] | None = None,
    **extra,
) -> Path:
    """Write our checkpoint atomically: {"model", "config", "backbone", "history", **extra}.

    `state` overrides the model's current weights (training keeps those of its best epoch).
    Only tensors, numbers, strings, lists and dicts: it loads with torch.load(weights_only=True).
    """
    state = model.state_dict() if state is None else state
    checkpoint = {
        "model": {key: value.detach().cpu() for key, value in state.items()},
        "config": dict(model.config),
        "backbone": backbone,
        "history": [dict(row) for row in history],
        **extra,
    }
    with io.atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def load_encoder(path: str | Path, backbone: str | None = None) -> VOPEncoder:
    """A VOPEncoder in eval mode on the CPU, from our checkpoint or the published glue-factory one.

    `backbone` (optional) is checked against the token width the checkpoint expects. The returned
    model carries `backbone` (the name stored in our checkpoints, else None).
    """
    path = Path(path)
    data = load_checkpoint_file(path)
    if _is_ours(data):
        config = dict(data["config"])
        state = data["model"]
        trained_on = data.get("backbone")
        if backbone is not None and trained_on is not None and backbone != trained_on:
            check_backbone(int(config["in_dim"]), backbone, path)  # the width message when widths differ
            raise ValueError(
                f"{path}: the encoder was trained on {trained_on} tokens but the backbone is {backbone}; "
                f"use an encoder trained on {backbone}"
            )
    else:
        model_state = data.get("model", data)
        if not isinstance(model_state, dict):
            raise ValueError(f"{path}: `model` is a {type(model_state).__name__}, expected a state dict")
        state = _find_encoder_state(model_state, path)
        config = _infer_config(state, path)
        config["dropout"] = 0.0  # inference only; unknown for imported weights
        trained_on = None
    check_backbone(int(config["in_dim"]), backbone, path)
    model = VOPEncoder(
        config["in_dim"],
        config["out_dim"],
        config.get("hidden_dims"),
        config.get("dropout", 0.0),
        config.get("keypoint_dropout", False),
    )
    _load_strict(model, state, path, model.config)
    model.backbone = trained_on
    model.checkpoint = str(path)
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Applying an encoder to a features file


def _read_group(f: h5py.File, path: Path, name: str) -> h5py.Group:
    if name not in f:
        raise KeyError(f"{path}: no features for image {name!r}; rerun the features rule")
    return f[name]


def _identity_groups(features_h5: Path, names: list[str]) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    with h5py.File(features_h5, "r") as f:
        for name in names:
            g = _read_group(f, features_h5, name)
            yield (
                name,
                {
                    "global_descriptor": l2_normalize(g["global_descriptor"][()]),
                    "patch_descriptors": l2_normalize(g["patch_descriptors"][()]).astype(np.float16),
                    "keypoints": g["keypoints"][()],
                    "image_size": g["image_size"][()],
                },
            )


def _vop_groups(
    features_h5: Path, names: list[str], model: VOPEncoder, device: torch.device, batch_size: int
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    with h5py.File(features_h5, "r") as f, torch.inference_mode():
        for start in range(0, len(names), batch_size):
            batch = names[start : start + batch_size]
            groups = [_read_group(f, features_h5, name) for name in batch]
            tokens = np.stack([g["patch_descriptors"][()] for g in groups])
            if tokens.ndim != 3 or tokens.shape[-1] != model.in_dim:
                raise ValueError(
                    f"{features_h5}: patch tokens of shape {tokens.shape[1:]} but the encoder "
                    f"{getattr(model, 'checkpoint', '')} expects {_describe_dim(model.in_dim)}; "
                    "use the features of the backbone the encoder was trained on"
                )
            keypoints = np.stack([g["keypoints"][()] for g in groups]).astype(np.float32)
            out = model(torch.from_numpy(tokens).to(device), torch.from_numpy(keypoints).to(device))
            patches = l2_normalize(out, axis=-1).cpu().numpy().astype(np.float16)
            for i, (name, g) in enumerate(zip(batch, groups)):
                yield (
                    name,
                    {
                        "global_descriptor": l2_normalize(g["global_descriptor"][()]),
                        "patch_descriptors": patches[i],
                        "keypoints": keypoints[i],
                        "image_size": g["image_size"][()],
                    },
                )


def apply_encoder(features_h5: str | Path, out_h5: str | Path, conf: EncoderConf,
                  checkpoint: str | Path | None = None, names: list[str] | None = None,
                  device: str | None = None) -> None:
    """Write embeddings-{encoder}.h5 from features-{backbone}.h5 with a configured encoder.

    `checkpoint` (type vop): the trained or published weights; default `conf.checkpoint`. `conf.backbone`
    is checked against the checkpoint; `conf.batch_size` images go through the head at once.
    """
    kind = conf.type
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder type {kind!r}: expected one of {ENCODERS}")
    checkpoint = checkpoint or conf.checkpoint
    if kind == "vop" and not checkpoint:
        raise ValueError("encoder type 'vop' needs a checkpoint: the path of a trained or published VOP encoder")
    features_h5 = Path(features_h5)
    if not features_h5.is_file():
        raise FileNotFoundError(f"{features_h5}: features file not found; run the features rule first")
    names = list(names) if names is not None else io.list_h5_names(features_h5)
    if kind == "identity":
        groups = _identity_groups(features_h5, names)
    else:
        device = resolve_device(device)
        model = load_encoder(checkpoint, conf.backbone).to(device)
        if conf.batch_size < 1:
            raise ValueError(f"encoder batch_size must be >= 1, got {conf.batch_size}")
        groups = _vop_groups(features_h5, names, model, device, conf.batch_size)
    io.write_image_groups(out_h5, io.Streamed(progress(groups, len(names), "embeddings", "images", logger=logger)))
    logger.info("wrote %d %s embeddings to %s", len(names), kind, out_h5)
