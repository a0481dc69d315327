"""The patch grid every backbone shares: images resized to 224x224, cut into 16x16 patches of 14 px.

Patch index = row * GRID + col (row-major). The features file stores the patch centres in resized-image
pixels; in the original image (any size) patch (row, col) covers x in [col * W / 16, (col + 1) * W / 16)
and y likewise, so a pixel's patch follows from its coordinates without resizing anything.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 224
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 16
NUM_PATCHES = GRID * GRID


def patch_keypoints(grid: int = GRID, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """(grid*grid, 2) float32 patch centres [x, y], row-major: x = 14*col + 7, y = 14*row + 7."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return np.stack([cols, rows], axis=1).astype(np.float32) * patch_size + patch_size / 2


def pixel_patches(x: np.ndarray, y: np.ndarray, width: int, height: int, grid: int = GRID) -> np.ndarray:
    """Patch index of continuous image points (x, y) inside a width x height image."""
    col = np.clip(np.floor(x * (grid / width)), 0, grid - 1).astype(np.int64)
    row = np.clip(np.floor(y * (grid / height)), 0, grid - 1).astype(np.int64)
    return row * grid + col


def mirror_patch_indices(index, grid: int = GRID):
    """Patch index row*grid+col -> its index in the horizontally mirrored image: row*grid+(grid-1-col)."""
    row, col = divmod(index, grid)
    return row * grid + (grid - 1 - col)
