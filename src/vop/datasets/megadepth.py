"""MegaDepth in the glue-factory layout (the archives at cvg-data.inf.ethz.ch/megadepth)::

    {root}/scene_info/0015.npz                          D2-Net scene info (below)
    {root}/Undistorted_SfM/0015/images/123.jpg           undistorted images
    {root}/depth_undistorted/0015/123.h5                 `depth` (H,W) float32, 0 where unknown

A scene_info npz holds, per image of the reconstruction, `image_paths` (relative to root, None for images
that were not kept), `depth_paths`, `intrinsics` (3,3), `poses` (4,4 world-to-camera) and `overlap_matrix`
(N,N): o[i,j] = |shared 3D points| / |points of i|, -1 where undefined. Our overlap is the co-visibility
|P_i & P_j| / min(|P_i|, |P_j|) = max(o[i,j], o[j,i]), so it means the same as on ETH3D.

The evaluation scenes of the reference are 0015 and 0022 (MegaDepth-1500); training uses other scenes.
Image names are relative to `Undistorted_SfM/{scene}/images`.

Object arrays in the npz (the paths) are pickled; they are read with an unpickler that accepts numpy
arrays of strings and None only, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path, PurePosixPath

import h5py
import numpy as np
from numpy.lib import format as npy_format

from vop.datasets import ArchivePart, NoDepthError, SceneReader
from vop.images import image_sizes
from vop.io import GroundTruth, check_image_name

DEFAULT_URL = "https://cvg-data.inf.ethz.ch/megadepth/"
TEST_SCENES = ("0015", "0022")
INFO_DIR, IMAGE_DIR, DEPTH_DIR = "scene_info", "Undistorted_SfM", "depth_undistorted"
ARCHIVES = ("scene_info.tar.gz", "Undistorted_SfM.tar.gz", "depth_undistorted.tar.gz")  # one top folder each
INFO_KEYS = ("image_paths", "depth_paths", "intrinsics", "poses", "overlap_matrix")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays (of str/None objects) and nothing else."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")})

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a scene_info file")


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz; object arrays through the restricted unpickler."""
    path = Path(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                data = io.BytesIO(zf.read(member))
                version = npy_format.read_magic(data)
                read_header = npy_format.read_array_header_1_0 if version == (1, 0) else \
                    npy_format.read_array_header_2_0
                _, _, dtype = read_header(data)
                if dtype.hasobject:
                    out[member[:-4]] = np.asarray(_ArrayUnpickler(data).load())
                else:
                    data.seek(0)
                    out[member[:-4]] = npy_format.read_array(data, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{path}: not a readable scene_info .npz ({e}); extract scene_info.tar.gz again") from e
    return out


class MegaDepthScene(SceneReader):
    source = "megadepth"
    has_depth = True
    url = DEFAULT_URL
    default_scenes = TEST_SCENES

    def __init__(self, root: str | Path, scene: str | None = None, **options):
        if not scene:
            raise ValueError(f"{root}: name the MegaDepth scene (e.g. {TEST_SCENES[0]})")
        super().__init__(root, scene, **options)
        self._info = None

    @classmethod
    def archive_parts(cls, scene: str) -> list[ArchivePart]:
        return [
            ArchivePart("scene_info", "scene_info.tar.gz", f"{INFO_DIR}/"),
            ArchivePart(f"{IMAGE_DIR}-{scene}", "Undistorted_SfM.tar.gz", f"{IMAGE_DIR}/{scene}/"),
            ArchivePart(f"{DEPTH_DIR}-{scene}", "depth_undistorted.tar.gz", f"{DEPTH_DIR}/{scene}/", role="depth"),
        ]

    def input_files(self) -> list[Path]:
        return [self.info_path, self.image_dir]

    def depth_files(self) -> list[Path]:
        return [self.root / DEPTH_DIR / self.scene]

    @property
    def info_path(self) -> Path:
        return self.root / INFO_DIR / f"{self.scene}.npz"

    @property
    def image_dir(self) -> Path:
        return self.root / IMAGE_DIR / self.scene / "images"

    def info(self) -> dict[str, np.ndarray]:
        if self._info is None:
            if not self.info_path.is_file():
                raise FileNotFoundError(
                    f"{self.info_path}: scene info of MegaDepth scene {self.scene!r} not found; {self.root} must "
                    f"hold {INFO_DIR}/, {IMAGE_DIR}/ (and {DEPTH_DIR}/ for training), as unpacked from "
                    f"{', '.join(ARCHIVES)} at {DEFAULT_URL}"
                )
            info = load_npz(self.info_path)
            missing = [k for k in INFO_KEYS if k not in info]
            if missing:
                raise ValueError(f"{self.info_path}: missing {missing}; expected the D2-Net/glue-factory keys "
                                 f"{list(INFO_KEYS)}")
            self._info = info
        return self._info

    def _valid(self) -> np.ndarray:
        return np.array([p is not None for p in self.info()["image_paths"]], bool)

    def _name(self, image_path: str) -> str:
        prefix = PurePosixPath(IMAGE_DIR, self.scene, "images")
        path = PurePosixPath(str(image_path))
        if prefix not in path.parents:
            raise ValueError(f"{self.info_path}: image path {image_path!r} is not under {prefix}/; "
                             "the file is not in the glue-factory layout")
        return path.relative_to(prefix).as_posix()

    def _images(self) -> tuple[list[str], np.ndarray]:
        """The scene's image names, sorted, and their indices in the scene info."""
        info = self.info()
        index = np.flatnonzero(self._valid())
        names = [self._name(p) for p in info["image_paths"][index]]
        order = np.argsort(names, kind="stable")  # images sorted by name, as the other readers
        return [names[i] for i in order], index[order]

    def image_names(self) -> list[str]:
        return self._images()[0]

    def ground_truth(self) -> GroundTruth:
        info = self.info()
        names, index = self._images()
        for name in names:
            check_image_name(name, self.image_dir)
        missing = [n for n in names if not (self.image_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.image_dir / missing[0]}: listed in {self.info_path} but missing "
                                    f"({len(missing)} in all); extract Undistorted_SfM.tar.gz again")
        o = np.asarray(info["overlap_matrix"], np.float64)[np.ix_(index, index)]
        o = np.clip(np.nan_to_num(o, nan=0.0), 0.0, 1.0)
        overlap = np.maximum(o, o.T)
        np.fill_diagonal(overlap, 1.0)
        K = np.asarray(info["intrinsics"], np.float64)[index].reshape(-1, 3, 3)
        T = np.asarray(info["poses"], np.float64)[index].reshape(-1, 4, 4)
        return GroundTruth(names, K, T, image_sizes(self.image_dir, names), overlap.astype(np.float32),
                           overlap_source="scene_info")

    def depth_path(self, name: str) -> Path:
        return self.root / DEPTH_DIR / self.scene / f"{PurePosixPath(name).stem}.h5"

    def depth(self, name: str, size) -> np.ndarray:
        path = self.depth_path(name)
        if not path.is_file():
            raise NoDepthError(
                f"{path}: depth of image {name} not found; training on MegaDepth needs {DEPTH_DIR}/ "
                f"(depth_undistorted.tar.gz at {DEFAULT_URL}) beside {INFO_DIR}/ in {self.root}"
            )
        with h5py.File(path, "r") as f:
            if "depth" not in f:
                raise ValueError(f"{path}: no `depth` dataset; not a MegaDepth depth file")
            depth = f["depth"][()].astype(np.float32)
        width, height = (int(s) for s in size)
        if depth.shape != (height, width):
            raise ValueError(f"{path}: depth is {depth.shape[1]}x{depth.shape[0]} but image {name} is "
                             f"{width}x{height}; depth and images come from different releases")
        return depth
