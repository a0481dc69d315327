"""Frozen backbones: one image in, a global descriptor and a 16x16 grid of patch descriptors out.

Every backbone takes RGB images in [0, 1] at 224x224 (B,3,224,224), does its own normalisation, and
returns `(global_descriptor (B,C), patch_descriptors (B,256,C))`, patches row-major over the grid,
so patch k sits at grid row k // 16, column k % 16 (the features file stores their centres).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vop import grid
from vop.utils import resolve_device

DENSE_SIFT_DIM = 128


@dataclass(frozen=True)
class Dinov2Arch:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    use_swiglu_ffn: bool
    hf_id: str  # the Hugging Face model with the same weights


DINOV2_ARCHS: dict[str, Dinov2Arch] = {
    "dinov2_vits14": Dinov2Arch(384, 12, 6, False, "facebook/dinov2-small"),
    "dinov2_vitb14": Dinov2Arch(768, 12, 12, False, "facebook/dinov2-base"),
    "dinov2_vitl14": Dinov2Arch(1024, 24, 16, False, "facebook/dinov2-large"),
    "dinov2_vitg14": Dinov2Arch(1536, 40, 24, True, "facebook/dinov2-giant"),
}
DINOV2_NAMES = tuple(DINOV2_ARCHS)
BACKBONES = ("dense_sift", *DINOV2_NAMES)
# name -> width of its tokens (a trained encoder only fits tokens of the width it was trained on)
TOKEN_DIMS = {"dense_sift": DENSE_SIFT_DIM, **{name: arch.hidden_size for name, arch in DINOV2_ARCHS.items()}}


class Backbone(nn.Module):
    """Common interface; subclasses set `name` and `dim` and implement `forward`."""

    image_size = grid.IMAGE_SIZE
    patch_size = grid.PATCH_SIZE
    grid = grid.GRID

    def __init__(self, name: str, dim: int):
        super().__init__()
        self.name = name
        self.dim = dim
        # Empty buffer that follows .to(device), so parameter-free backbones know their device too.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def check_images(self, images: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"{self.name}: expected a float tensor (B,{expected[0]},{expected[1]},{expected[2]}) "
                f"RGB in [0,1], got {shape}; resize images with vop.features.resize_image"
            )
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0,1], got {images.dtype}; divide by 255")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name}, dim={self.dim}"


def load_backbone(
    name: str, weights: str | None = "auto", device: str | torch.device | None = None
) -> Backbone:
    """A frozen backbone in eval mode on `device`; `weights` as in vop.backbones.dinov2.load_dinov2."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: expected one of {', '.join(BACKBONES)}")
    device = resolve_device(device)
    # Imported here: the backbone modules import `Backbone` from this package.
    if name == "dense_sift":
        from .dense_sift import DenseSift

        if weights not in (None, "", "none", "auto"):
            raise ValueError(
                f"dense_sift has no weights, got weights={weights!r}: set backbones.dense_sift.weights to auto"
            )
        backbone: Backbone = DenseSift()
    else:
        from .dinov2 import load_dinov2

        backbone = load_dinov2(name, weights)
    backbone = backbone.to(device).eval()
    backbone.requires_grad_(False)
    return backbone


__all__ = ["BACKBONES", "DINOV2_NAMES", "TOKEN_DIMS", "Backbone", "load_backbone", "resolve_device"]
