"""Small helpers shared by the stages."""

from __future__ import annotations

import logging
import sys

import numpy as np
import torch


def l2_normalize(x, axis: int = -1):
    """L2-normalise along `axis` (numpy arrays come back float32, tensors float)."""
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.normalize(x.float(), dim=axis)
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, then square root; zero rows stay zero.
    The dot product of RootSIFT descriptors is the Hellinger kernel of the SIFT histograms."""
    descriptors = np.maximum(descriptors, 0.0)
    l1 = descriptors.sum(axis=-1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(l1, 1e-12)).astype(np.float32)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device to run on: the one named, else CUDA when present, else the CPU."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_logging(log_file: str | None = None) -> None:
    """Log to the rule's log file (or stderr), with times, so a job's log tells what it did and how long."""
    handler = logging.FileHandler(log_file, mode="w") if log_file else logging.StreamHandler(sys.stderr)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
        force=True,
    )

    def log_uncaught(kind, value, tb):
        # The traceback belongs in the rule's log too, not only on the scheduler's stderr.
        logging.getLogger("vop").error("failed: %s", value, exc_info=(kind, value, tb))
        sys.__excepthook__(kind, value, tb)

    sys.excepthook = log_uncaught
