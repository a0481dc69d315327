"""Local features: SIFT keypoints and descriptors of every image of a scene, once, for every method.

Extractors (a registry, picked by `local_features.extractor`): OpenCV's SIFT or COLMAP's (pycolmap),
RootSIFT optional, a keypoint budget and a resize. The h5 is laid out like hloc's local features, so
hloc's tools read it: per image `keypoints` (N,2), `descriptors` (128,N) float16, `scores` (N,),
`image_size` [w,h]. Keypoints follow hloc's convention (the centre of the top-left pixel is (0,0)).

Scale buckets (pose.scale_aware, vop.scale_aware): the same extraction on the image downsampled by a factor
2^(-j/2), j = 0..MAX_BUCKET (half-octaves), keypoints mapped back to the original pixels; bucket 0 is the
ordinary extraction.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import h5py
import numpy as np

from vop.conf import LocalFeaturesConf
from vop.images import read_image
from vop.io import write_image_groups
from vop.progress import progress
from vop.utils import l2_normalize
from vop.utils import root_sift as to_root_sift

logger = logging.getLogger(__name__)


MAX_BUCKET = 6  # 2^-3: an eighth of the size, the largest scale change worth a separate extraction


def bucket_factor(bucket: int) -> float:
    """The downsampling factor of a scale bucket: 2^(-bucket/2)."""
    return 2.0 ** (-bucket / 2)


def scale_bucket(factor: float) -> int:
    """The scale bucket nearest (in log2) to a downsampling factor <= 1; no factor (NaN) or >= 1: 0, and the
    smallest factors clamp at MAX_BUCKET."""
    if not math.isfinite(factor) or factor >= 1:
        return 0
    if factor <= 0:
        return MAX_BUCKET
    return min(MAX_BUCKET, round(-2 * math.log2(factor)))


def _resize(image: np.ndarray, resize_max: int | None, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The image downscaled so that its longer side is at most resize_max, then by `factor` (one resize),
    and the (x, y) scale back."""
    h, w = image.shape[:2]
    s = min(1.0, resize_max / max(w, h)) if resize_max else 1.0
    s *= factor
    if s >= 1:
        return image, np.ones(2)
    new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return resized, np.array([w / new_w, h / new_h])


def _no_features(w: int, h: int) -> dict[str, np.ndarray]:
    # A textureless image is legal: its pairs are recorded as failed later.
    return {"keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((128, 0), np.float16),
            "scores": np.zeros((0,), np.float32), "image_size": np.array([w, h], np.int64)}


def _pack(kpts: np.ndarray, desc: np.ndarray, scores: np.ndarray, scale_xy: np.ndarray,
          w: int, h: int) -> dict[str, np.ndarray]:
    # Back to original pixels; pixel centres map onto pixel centres.
    kpts = ((kpts + 0.5) * scale_xy - 0.5).astype(np.float32)
    return {
        "keypoints": kpts,
        "descriptors": np.ascontiguousarray(desc.T).astype(np.float16),  # hloc stores D x N
        "scores": scores.astype(np.float32),
        "image_size": np.array([w, h], np.int64),
    }


def _sift_opencv(image: np.ndarray, max_keypoints: int, root_sift: bool):
    # nfeatures=0 keeps all candidates so that the cut below sees every orientation duplicate.
    cv_kpts, desc = cv2.SIFT_create(nfeatures=0).detectAndCompute(image, None)
    if desc is None or len(cv_kpts) == 0:
        return None
    # OpenCV detects on the image upsampled x2 and halves the coordinates without the half-pixel
    # correction, so its keypoints sit 0.25 px right of and below the pixel-centre convention (measured
    # on Gaussian blobs: +0.23..+0.28 px at every scale; pycolmap's SIFT is exact there).
    kpts = np.array([k.pt for k in cv_kpts], np.float64) - 0.25
    scores = np.array([k.response for k in cv_kpts], np.float32)
    # OpenCV returns duplicates for multiple orientations; keep the strongest max_keypoints overall.
    order = np.argsort(-scores, kind="stable")[:max_keypoints]
    kpts, desc, scores = kpts[order], desc[order].astype(np.float32), scores[order]
    return kpts, l2_normalize(to_root_sift(desc) if root_sift else desc), scores


def _sift_colmap(image: np.ndarray, max_keypoints: int, root_sift: bool):
    import pycolmap

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1  # the images are spread over threads already
    options.sift.max_num_features = max_keypoints
    options.sift.normalization = (pycolmap.Normalization.L1_ROOT if root_sift else pycolmap.Normalization.L2)
    with warnings.catch_warnings():
        # pycolmap 4 deprecates Sift for FeatureExtractor, whose keypoints come back as Python objects.
        warnings.simplefilter("ignore", DeprecationWarning)
        sift = pycolmap.Sift(options, device=pycolmap.Device.cpu)
    kpts, desc = sift.extract(np.ascontiguousarray(image, dtype=np.float32) / 255.0)
    if len(kpts) == 0:
        return None
    # COLMAP applies the budget before adding extra orientations: cut again, keeping the largest scales
    # as COLMAP does, so the budget holds for both extractors.
    order = np.argsort(-kpts[:, 2], kind="stable")[:max_keypoints]
    kpts, desc = kpts[order], desc[order]
    # COLMAP puts the corner of the top-left pixel at (0, 0); hloc (and this file) its centre.
    return kpts[:, :2].astype(np.float64) - 0.5, l2_normalize(desc), kpts[:, 2]


SIFT_BACKENDS = {"opencv": _sift_opencv, "pycolmap": _sift_colmap}


def _sift_one(path: Path, max_keypoints: int, resize_max: int | None, root_sift: bool,
              backend: str, factor: float = 1.0) -> dict[str, np.ndarray]:
    image = read_image(path, grayscale=True)  # the stored grid, as COLMAP reads it (vop.images)
    h, w = image.shape[:2]
    image, scale_xy = _resize(image, resize_max, factor)
    found = SIFT_BACKENDS[backend](image, max_keypoints, root_sift)
    if found is None:
        return _no_features(w, h)
    return _pack(*found, scale_xy, w, h)


def _check_extractor(extractor: str) -> None:
    if extractor not in SIFT_BACKENDS:
        raise ValueError(f"unknown extractor {extractor!r}; choose one of {sorted(SIFT_BACKENDS)} "
                         "(config: local_features.extractor)")


def extract_at_bucket(path: str | Path, bucket: int, conf: LocalFeaturesConf = LocalFeaturesConf()
                      ) -> dict[str, np.ndarray]:
    """One image's local features at a scale bucket (as stored in local_features.h5): extracted with `conf` on
    the image downsampled by bucket_factor(bucket) after resize_max, keypoints in the original pixels (so K
    and the ground truth still apply)."""
    _check_extractor(conf.extractor)
    return _sift_one(Path(path), conf.max_keypoints, conf.resize_max, conf.root_sift, conf.extractor,
                     bucket_factor(bucket))


def extract_local_features(image_dir: str | Path, names: Sequence[str], out_h5: str | Path,
                           conf: LocalFeaturesConf = LocalFeaturesConf(), num_workers: int = 2) -> Path:
    """SIFT on every image of `names` (paths relative to `image_dir`), written to `out_h5` atomically."""
    image_dir, out_h5 = Path(image_dir), Path(out_h5)
    extractor = conf.extractor
    _check_extractor(extractor)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image directory not found")
    if len(set(names)) != len(names):
        raise ValueError("extract_local_features: duplicate image names given")

    def run(name: str) -> dict[str, np.ndarray]:
        return _sift_one(image_dir / name, conf.max_keypoints, conf.resize_max, conf.root_sift, extractor)

    def done(found: Iterable[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return list(progress(found, len(names), "local features", "images", logger=logger))

    if num_workers > 1 and len(names) > 1:
        with ThreadPoolExecutor(num_workers) as pool:  # OpenCV and COLMAP release the GIL
            features = done(pool.map(run, names))
    else:
        features = done(map(run, names))
    write_image_groups(out_h5, dict(zip(names, features)))
    logger.info("Extracted %s SIFT for %d images into %s", extractor, len(names), out_h5)
    return out_h5


def read_local_features(path: str | Path, names: Iterable[str], group: str = "/"
                        ) -> dict[str, dict[str, np.ndarray]]:
    """{name: {keypoints (N,2) float64, descriptors (N,D) float32, image_size (2,)}} for `names` (the image
    groups under `group`: a scale bucket's of vop.scale_aware's cache)."""
    path = Path(path)
    out = {}
    with h5py.File(path, "r") as root:
        f = root[group]
        for name in names:
            if name not in f or "keypoints" not in f[name]:
                raise KeyError(f"{path}: no local features for image {name!r}; the file is stale or from "
                               "another scene: delete it and rerun the extraction")
            g = f[name]
            out[name] = {
                "keypoints": g["keypoints"][()].astype(np.float64).reshape(-1, 2),
                "descriptors": np.ascontiguousarray(g["descriptors"][()].astype(np.float32).T),
                "image_size": g["image_size"][()],
            }
    return out
