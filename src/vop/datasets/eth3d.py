"""ETH3D high-res multi-view, undistorted: the archive used by glue-factory and the VOP reference code.

Layout of one scene (ETH3D_undistorted.zip holds the 13 training scenes)::

    {root}/{scene}/images/dslr_images_undistorted/DSC_0286.JPG
    {root}/{scene}/dslr_calibration_undistorted/{cameras,images,points3D}.txt    COLMAP text, PINHOLE
    {root}/{scene}/ground_truth_depth/dslr_images_undistorted/DSC_0286.JPG      raw depth (see below)

Image names in images.txt (`dslr_images_undistorted/DSC_0286.JPG`) are relative to `{root}/{scene}/images`
and are used unchanged as the image names of every later stage.

Depth maps follow ETH3D's raw convention: despite the .JPG name, the file is a headerless array of
little-endian float32 in row-major order, shape (height, width) of the image, holding the z-depth in
metres; pixels without ground truth are +inf. `read_depth` checks the file size against the image size.

    python -m vop.datasets.eth3d download URL resources/eth3d/ETH3D_undistorted.zip
    python -m vop.datasets.eth3d extract resources/eth3d/ETH3D_undistorted.zip resources/eth3d/extracted
    python -m vop.datasets.eth3d gt ROOT courtyard results/eth3d/courtyard/gt.h5
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from vop.datasets import colmap
from vop.io import replace_dir, write_gt

SCENES = (
    "courtyard", "delivery_area", "electro", "facade", "kicker", "meadow", "office", "pipes", "playground",
    "relief", "relief_2", "terrace", "terrains",
)
DEFAULT_URL = "https://cvg-data.inf.ethz.ch/SOLD2_ETH3D_undistorted/ETH3D_undistorted.zip"

IMAGES_SUBDIR = "images"
MODEL_SUBDIR = "dslr_calibration_undistorted"
DEPTH_SUBDIR = "ground_truth_depth/dslr_images_undistorted"


def scene_paths(root: str | Path, scene: str) -> tuple[Path, Path, Path]:
    """(images dir, model dir, depth dir) of a scene. Image names are relative to the images dir."""
    base = Path(root) / scene
    return base / IMAGES_SUBDIR, base / MODEL_SUBDIR, base / DEPTH_SUBDIR


def read_scene_model(root: str | Path, scene: str) -> colmap.Model:
    """The scene's COLMAP model, after checking that every image it lists is on disk."""
    images_dir, model_dir, _ = scene_paths(root, scene)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir}: calibration of scene {scene!r} not found; is {root} the extracted ETH3D_undistorted "
            f"directory (it holds one folder per scene: {', '.join(SCENES[:3])}, ...)?"
        )
    model = colmap.read_model(model_dir)
    missing = [im.name for im in model.images.values() if not (images_dir / im.name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{images_dir / missing[0]}: image listed in {model_dir / 'images.txt'} is missing "
            f"({len(missing)} missing in all); the archive is incomplete: download and extract it again"
        )
    return model


def write_ground_truth(root: str | Path, scene: str, out_h5: str | Path) -> None:
    """gt.h5 of one scene: K, T_w2cam, image_size per image (names as in images.txt) and the overlap."""
    model = read_scene_model(root, scene)
    write_gt(out_h5, colmap.ground_truth_from_model(model))


def read_depth(path: str | Path, width: int, height: int) -> np.ndarray:
    """A raw ETH3D depth map as float32 (height, width); +inf where there is no ground truth."""
    path = Path(path)
    expected = width * height * 4
    size = path.stat().st_size
    if size != expected:
        raise ValueError(
            f"{path}: {size} bytes, but a raw float32 depth map of a {width}x{height} image has {expected}; "
            "the file is truncated or belongs to another image size (re-extract the archive)"
        )
    return np.fromfile(path, dtype="<f4").reshape(height, width)


def download(url: str, dest: str | Path, name: str = "eth3d", timeout: float = 60.0) -> Path:
    """Download `url` to `dest` through a temporary file beside it, renamed when complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, f, length=1 << 20)
        if expected is not None and tmp.stat().st_size != int(expected):
            raise RuntimeError(
                f"download of {url} stopped after {tmp.stat().st_size} of {expected} bytes; run it again, "
                f"or fetch it by hand and put it at {dest}"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        # Only network failures land here; a local write error (disk full) propagates as it is.
        if isinstance(e, urllib.error.HTTPError):
            reason = f"the server answered HTTP {e.code} {e.reason}"
        else:
            reason = f"no network or server unreachable ({getattr(e, 'reason', e)})"
        raise RuntimeError(
            f"cannot download {url}: {reason}. Fetch {url} by hand and put it at {dest} "
            f"(or set the config key `datasets.{name}.root` to an extracted copy)"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _check_member(info: zipfile.ZipInfo, archive: Path) -> None:
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise ValueError(f"{archive}: member {name!r} would be written outside the target; refusing the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(f"{archive}: member {name!r} is a symbolic link; refusing the archive")


def extract_zip(archive: str | Path, target: str | Path, overwrite: bool = False, member_prefix: str = "") -> Path:
    """Extract a zip into `target` (created), refusing members that escape it and symbolic links.

    With `member_prefix` (e.g. "ETH3D_undistorted/courtyard/") only the members under it are extracted,
    to `target / member_prefix`, so one scene of a large archive can be unpacked by its own job.
    Extraction goes into a temporary directory that is renamed at the end, so an interrupted or refused
    extraction leaves no partial result. Returns the extracted folder.
    """
    archive, target = Path(archive), Path(target)
    final = target / member_prefix if member_prefix else target
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists: delete it or pass overwrite=True (--overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{archive}: not a valid zip archive ({e}); download it again") from e
    with zf:
        members = [m for m in zf.infolist() if m.filename.startswith(member_prefix)]
        if member_prefix and not members:
            raise ValueError(
                f"{archive} holds nothing under {member_prefix!r}: check the scene name in the config "
                "against the archive's folders"
            )
        for info in members:  # check everything before writing anything
            _check_member(info, archive)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            zf.extractall(tmp, members)
            replace_dir(tmp / member_prefix if member_prefix else tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vop.datasets.eth3d",
                                     description="ETH3D undistorted: download, extract, ground truth.")
    sub = parser.add_subparsers(dest="command", required=True)
    gt = sub.add_parser("gt", help="write gt.h5 of one scene")
    gt.add_argument("root", type=Path, help="directory holding the scene folders")
    gt.add_argument("scene", help=f"one of {', '.join(SCENES)} (or any scene in this layout)")
    gt.add_argument("out", type=Path, help="output gt.h5")
    dl = sub.add_parser("download", help="download the archive")
    dl.add_argument("url", nargs="?", default=DEFAULT_URL)
    dl.add_argument("dest", type=Path)
    ex = sub.add_parser("extract", help="extract the archive safely")
    ex.add_argument("archive", type=Path)
    ex.add_argument("target", type=Path)
    ex.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "gt":
        write_ground_truth(args.root, args.scene, args.out)
    elif args.command == "download":
        download(args.url, args.dest)
    else:
        extract_zip(args.archive, args.target, args.overwrite)


if __name__ == "__main__":
    main()
