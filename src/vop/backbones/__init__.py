"""Frozen backbones: one image in, a global descriptor and a 16x16 grid of patch descriptors out.

Every backbone takes RGB images in [0, 1] at 224x224 (B,3,224,224), does its own normalisation, and
returns `(global_descriptor (B,C), patch_descriptors (B,256,C))`, patches row-major over the grid,
so patch k sits at grid row k // 16, column k % 16 (the features file stores their centres).
"""

from __future__ import annotations

import torch
from torch import nn

DINOV2_NAMES = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")
BACKBONES = ("dense_sift", *DINOV2_NAMES)


class Backbone(nn.Module):
    """Common interface; subclasses set `name` and `dim` and implement `forward`."""

    image_size = 224
    patch_size = 14
    grid = 16  # image_size // patch_size

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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None picks CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_backbone(
    name: str, weights: str | None = None, device: str | torch.device | None = None
) -> Backbone:
    """A frozen backbone in eval mode on `device`; `weights` as in vop.backbones.dinov2.load_dinov2."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: expected one of {', '.join(BACKBONES)}")
    device = resolve_device(device)
    # Imported here: the backbone modules import `Backbone` from this package.
    if name == "dense_sift":
        from .dense_sift import DenseSift

        if weights not in (None, "", "none"):
            raise ValueError(
                f"dense_sift has no weights, got weights={weights!r}: set backbones.dense_sift.weights to null"
            )
        backbone: Backbone = DenseSift()
    else:
        from .dinov2 import load_dinov2

        backbone = load_dinov2(name, weights)
    backbone = backbone.to(device).eval()
    backbone.requires_grad_(False)
    return backbone


__all__ = ["BACKBONES", "DINOV2_NAMES", "Backbone", "load_backbone", "resolve_device"]
