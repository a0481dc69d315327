"""Encoders: map backbone patch tokens to the patch embeddings that VOP votes with.

`identity` L2-normalises the backbone tokens (the baseline without a trained head).
The output keeps the keys of the features file (DESIGN.md, "embeddings").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py
import numpy as np

from . import io
from .utils import l2_normalize, setup_logging

logger = logging.getLogger(__name__)

ENCODERS = ("identity",)


def apply_encoder(features_h5: str | Path, out_h5: str | Path, encoder: dict, names: list[str] | None = None) -> None:
    """Write embeddings-{encoder}.h5 from features-{backbone}.h5 with a configured encoder entry."""
    kind = encoder.get("type", "identity")
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder type {kind!r}: expected one of {ENCODERS}")
    features_h5 = Path(features_h5)
    names = names if names is not None else io.list_h5_names(features_h5)
    out: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(features_h5, "r") as f:
        for name in names:
            if name not in f:
                raise KeyError(f"{features_h5}: no features for image {name!r}; rerun the features rule")
            g = f[name]
            out[name] = {
                "global_descriptor": l2_normalize(g["global_descriptor"][()]),
                "patch_descriptors": l2_normalize(g["patch_descriptors"][()]).astype(np.float16),
                "keypoints": g["keypoints"][()],
                "image_size": g["image_size"][()],
            }
    io.write_image_groups(out_h5, out)
    logger.info("wrote %d embeddings to %s", len(out), out_h5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--type", default="identity", choices=ENCODERS)
    args = parser.parse_args(argv)
    setup_logging()
    apply_encoder(args.features, args.out, {"type": args.type})


if __name__ == "__main__":
    main()
