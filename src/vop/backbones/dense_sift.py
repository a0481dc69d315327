"""dense_sift: a backbone without weights, so the whole pipeline runs offline.

The 224x224 grayscale image is cut into the same 16x16 grid of 14x14 cells as a ViT-*/14; each cell
gets one RootSIFT descriptor computed at its centre (upright, window = the cell). The global
descriptor pools the patch descriptors (see `pool_global`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from ..utils import root_sift
from . import DENSE_SIFT_DIM, Backbone

# OpenCV's SIFT window is 4 bins of 3 * size / 2 px = 6 * size px wide: size = 14 / 6 covers one cell.
_CELL = Backbone.patch_size
_KEYPOINT_SIZE = _CELL / 6.0
_GEM_POWER = 3.0
_EPS = 1e-12

_thread_state = threading.local()


def _sift() -> cv2.SIFT:
    # One extractor per thread: the batch is described in parallel threads.
    if not hasattr(_thread_state, "sift"):
        _thread_state.sift = cv2.SIFT_create()
    return _thread_state.sift


def cell_keypoints(grid: int = Backbone.grid, cell: int = _CELL) -> list[cv2.KeyPoint]:
    """Upright keypoints at the cell centres, row-major (OpenCV puts pixel centres at integers)."""
    centres = np.arange(grid) * cell + (cell - 1) / 2.0
    return [cv2.KeyPoint(float(x), float(y), _KEYPOINT_SIZE, 0.0) for y in centres for x in centres]


def pool_global(patches: torch.Tensor, power: float = _GEM_POWER) -> torch.Tensor:
    """(B,N,C) RootSIFT -> (B,C) global descriptor: GeM pooling, centred, L2-normalised.

    The mean RootSIFT of any image is close to the same generic gradient histogram, so a plain mean
    makes every image look alike. GeM (p=3) weighs the dominant orientations more, and subtracting the
    per-image mean over the 128 bins removes the part common to all images before normalising.
    """
    pooled = patches.clamp(min=0).pow(power).mean(dim=1).clamp(min=_EPS).pow(1.0 / power)
    pooled = pooled - pooled.mean(dim=-1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


class DenseSift(Backbone):
    """RootSIFT on the 16x16 cell grid; dim 128. CPU (OpenCV) whatever the device of the input."""

    def __init__(self, num_threads: int | None = None):
        super().__init__("dense_sift", DENSE_SIFT_DIM)
        self.num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
        self._keypoints = cell_keypoints(self.grid, self.patch_size)

    def describe_gray(self, gray: np.ndarray) -> np.ndarray:
        """(224,224) uint8 -> (256,128) raw SIFT descriptors, row-major over the cells."""
        keypoints, descriptors = _sift().compute(gray, self._keypoints)
        if descriptors is None or len(keypoints) != self.num_patches:
            raise RuntimeError(f"dense_sift: OpenCV returned {0 if descriptors is None else len(keypoints)} "
                               f"descriptors for {self.num_patches} cells")
        return descriptors

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_images(images)
        # ITU-R BT.601 luma, as cv2.cvtColor(RGB2GRAY), rounded to the 8 bits SIFT takes.
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=images.device)
        gray = torch.einsum("bchw,c->bhw", images.float(), weights)
        gray = (gray * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        if len(gray) > 1 and self.num_threads > 1:
            # OpenCV releases the GIL, so threads describe images in parallel.
            with ThreadPoolExecutor(min(self.num_threads, len(gray))) as pool:
                raw = list(pool.map(self.describe_gray, gray))
        else:
            raw = [self.describe_gray(g) for g in gray]
        patches = torch.from_numpy(root_sift(np.stack(raw))).to(images.device)
        return pool_global(patches), patches
