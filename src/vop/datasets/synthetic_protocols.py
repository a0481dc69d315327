"""Offline fixtures of the other protocols' layouts, rendered by the project's generator (vop.datasets.synthetic).

Each is a generated source: the reader of the real layout, plus a `generate` that renders a scene with
the synthetic renderer and writes it in that layout, so the demo runs every protocol through the same
readers as the real datasets.

`synthetic_vpr` (read by vop.datasets.vpr): a street, a road between two facades 14 m apart, its surfaces
the same photograph mosaics as the rooms. Database cameras stand every 8 m along the street, each
position seen twice, facing either facade (yaw within 10 degrees); the queries are held apart: other
positions along the street, off the centre line, other heights, lenses (wider and longer) and headings
(yaw within 30 degrees), each with its own exposure and noise. File names carry the camera centre as UTM
(east = 585000 + x, north = 4477000 + y in metres, zone 17T), `@E@N@17@T@@@<id>@@<heading>@@@@@@.jpg`:
::

    {scene}/images/test/database/@585012.00@4477007.31@17@T@@@db0003@@090@@@@@@.jpg
    {scene}/images/test/queries/@585047.85@4477006.02@17@T@@@q0001@@271@@@@@@.jpg

`synthetic_revisitop` (read by vop.datasets.revisitop): a room; a sixth of its views (one per look-at
target first) are the queries, the others the database, written as `jpg/<scene>_<k>.jpg` with
`gnd_<scene>.pkl` (imlist, qimlist, gnd). Each query's bbx is its central 80 % (a 10 % margin on every
side); its labels come from the true co-visibility overlap of the bbx with each database image, the
3D points seen inside the box against those the database image sees, |P_q & P_d| / min(|P_q|, |P_d|):
easy >= 0.5, hard in [0.25, 0.5), junk in [0.1, 0.25), below 0.1 neither (a negative).

`synthetic_image_list` (read by vop.datasets.image_list): a room written as `images/<scene>_<k>.jpg`, the
list `image_list.txt` in image order and `gt_pairs.txt` with `i j` (both ways) for every pair whose true
co-visibility overlap is >= 0.1.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vop.conf import Conf, SyntheticConf
from vop.datasets import colmap, synthetic
from vop.datasets.image_list import ImageListScene
from vop.datasets.revisitop import RevisitopScene, gnd_file
from vop.datasets.vpr import QUERY_DIR, VprOptions, VprScene
from vop.geometry import covisibility_overlap, qvec_to_rotmat, rotmat_to_qvec
from vop.io import atomic_path, replace_dir

logger = logging.getLogger(__name__)

# street geometry (metres)
STREET_SPACING = 8.0  # between database positions
STREET_WIDTH = 14.0  # between the facades
STREET_HEIGHT = 12.0  # of the facades
STREET_MARGIN = 10.0  # road before the first and after the last position
STREET_TEXELS_PER_M = 48.0  # enough for views from the street (a pixel covers 2-5 cm of facade)
UTM_ORIGIN = (585000.0, 4477000.0)  # street x along east, y along north
UTM_ZONE = ("17", "T")

# landmark labels from the true overlap of the query's box (revisitop)
EASY, HARD, JUNK = 0.5, 0.25, 0.1
BBX_MARGIN = 0.1  # of the image size, on every side
# ground-truth pairs of the image list
PAIR_OVERLAP = 0.1


def _sources(textures):
    out = []
    for name in textures:
        image = synthetic.load_texture(name)
        gray = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
        out.append((image, gray))
    return out


def _view(center, yaw, pitch, focal, width, height, kind) -> synthetic.View:
    direction = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    R = synthetic._look_at(np.asarray(center, np.float64), np.asarray(center, np.float64) + direction, 0.0)
    qvec = rotmat_to_qvec(R)
    R = qvec_to_rotmat(qvec)
    K = np.array([[focal * width, 0, width / 2], [0, focal * width, height / 2], [0, 0, 1]])
    return synthetic.View(K, qvec, -R @ np.asarray(center, np.float64), width, height, kind)


@dataclass
class Street:
    scene: synthetic.Scene
    kinds: list[str]  # "database" or "query" per view
    headings: np.ndarray  # (N,) yaw in degrees, 0 = east, counter-clockwise


def build_street(seed: int, num_images: int, width: int, height: int, textures) -> Street:
    """The street, its textured quads and its database and query cameras (nothing rendered)."""
    if num_images < 6:
        raise ValueError(f"a synthetic VPR street needs at least 6 images (2 database positions, 2 queries), "
                         f"got num_images={num_images}")
    rng = np.random.default_rng(seed)
    sources = _sources(textures)
    num_positions = (num_images - max(2, num_images // 5)) // 2
    num_queries = num_images - 2 * num_positions
    length = 2 * STREET_MARGIN + STREET_SPACING * num_positions
    x, y, z = np.eye(3)
    faces = [  # name, center, normal, up, width, height, tile size
        ("road", (length / 2, STREET_WIDTH / 2, 0), z, x, STREET_WIDTH, length, 2.0),
        ("facade_south", (length / 2, 0, STREET_HEIGHT / 2), y, z, length, STREET_HEIGHT, 1.4),
        ("facade_north", (length / 2, STREET_WIDTH, STREET_HEIGHT / 2), -y, z, length, STREET_HEIGHT, 1.4),
        ("end_west", (0, STREET_WIDTH / 2, STREET_HEIGHT / 2), x, z, STREET_WIDTH, STREET_HEIGHT, 1.4),
        ("end_east", (length, STREET_WIDTH / 2, STREET_HEIGHT / 2), -x, z, STREET_WIDTH, STREET_HEIGHT, 1.4),
    ]
    corners, rights, downs, names, pyramids = [], [], [], [], []
    for name, center, normal, up, w, h, tile in faces:
        c, r, d = synthetic._face(center, normal, up, w, h)
        corners.append(c), rights.append(r), downs.append(d), names.append(name)
        pyramids.append(synthetic._pyramid(synthetic._mosaic(rng, sources, w, h, STREET_TEXELS_PER_M, tile)))
    quads = synthetic.Quads(np.array(corners), np.array(rights), np.array(downs), names, pyramids)

    views, kinds, headings = [], [], []
    for p in range(num_positions):
        px = STREET_MARGIN + (p + 0.5) * STREET_SPACING
        for side in (-1, 1):  # facing the south facade (-y), the north one (+y)
            center = (px, STREET_WIDTH / 2 + rng.normal(0, 0.4), rng.uniform(1.5, 2.2))
            yaw = side * np.pi / 2 + rng.uniform(-1, 1) * np.radians(10)
            views.append(_view(center, yaw, rng.uniform(0.0, 0.12), rng.uniform(0.6, 0.8), width, height, "target"))
            kinds.append("database"), headings.append(np.degrees(yaw) % 360)
    for _ in range(num_queries):
        px = rng.uniform(STREET_MARGIN + STREET_SPACING / 2, length - STREET_MARGIN - STREET_SPACING / 2)
        center = (px, STREET_WIDTH / 2 + np.clip(rng.normal(0, 1.5), -4, 4), rng.uniform(1.4, 2.4))
        yaw = rng.choice([-1, 1]) * np.pi / 2 + rng.uniform(-1, 1) * np.radians(30)
        views.append(_view(center, yaw, rng.uniform(-0.05, 0.2), rng.uniform(0.5, 1.0), width, height, "target"))
        kinds.append("query"), headings.append(np.degrees(yaw) % 360)
    scene_names = [f"dslr_images_undistorted/IMG_{k:04d}.JPG" for k in range(len(views))]
    room = np.array([length, STREET_WIDTH, STREET_HEIGHT])
    return Street(synthetic.Scene(room, [], quads, views, scene_names), kinds, np.array(headings))


def utm_name(view: synthetic.View, heading: float, tag: str) -> str:
    east, north = UTM_ORIGIN[0] + view.center[0], UTM_ORIGIN[1] + view.center[1]
    return f"@{east:.2f}@{north:.2f}@{UTM_ZONE[0]}@{UTM_ZONE[1]}@@@{tag}@@{heading:03.0f}@@@@@@.jpg"


def _render(tmp: Path, seed: int, conf: SyntheticConf, scene: synthetic.Scene | None = None,
            texels_per_m: float = 256.0, points_per_m2: float = 80.0) -> synthetic.Scene:
    """The scene (this seed's room unless given) rendered in the ETH3D layout into `tmp`."""
    textures = synthetic.TRAIN_TEXTURES if conf.textures == "train" else synthetic.EVAL_TEXTURES
    return synthetic.generate_scene(tmp, seed, conf.num_images, conf.width, conf.height, textures,
                                    texels_per_m=texels_per_m, points_per_m2=points_per_m2, overwrite=True,
                                    scene=scene)


def _copy_jpeg(src: Path, dest: Path) -> None:
    """The rendered image as a .jpg (the renderer's JPEG bytes, unchanged)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _observations(model_dir: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (in `names` order): the ids of the 3D points it sees and where, (M,) and (M,2)."""
    model = colmap.read_model(model_dir)
    by_name = {image.name: image for image in model.images.values()}
    out = []
    for name in names:
        points = [p for p in by_name[name].points2D if p.has_point3D()]
        out.append((np.array([p.point3D_id for p in points], np.int64),
                    np.array([p.xy for p in points], np.float64).reshape(-1, 2)))
    return out


def _workdir(scene_dir: Path) -> tuple[Path, Path]:
    """(folder the layout is written into, folder of the intermediate ETH3D render), beside scene_dir."""
    scene_dir.parent.mkdir(parents=True, exist_ok=True)
    out, render = (scene_dir.parent / f".{scene_dir.name}.{what}" for what in ("layout", "render"))
    for path in (out, render):
        shutil.rmtree(path, ignore_errors=True)
    return out, render


def generate_vpr(scene_dir: str | Path, seed: int, conf: SyntheticConf, split: str = "test") -> synthetic.Scene:
    """A synthetic street in the VPR layout (module docstring) at `scene_dir`, replacing what is there."""
    scene_dir = Path(scene_dir)
    out, render = _workdir(scene_dir)
    try:
        textures = synthetic.TRAIN_TEXTURES if conf.textures == "train" else synthetic.EVAL_TEXTURES
        street = build_street(seed, conf.num_images, conf.width, conf.height, textures)
        scene = _render(render, seed, conf, street.scene, STREET_TEXELS_PER_M, points_per_m2=1.0)
        names = []
        counts = {"database": 0, "query": 0}
        for view, rendered, kind, heading in zip(scene.views, scene.names, street.kinds, street.headings, strict=True):
            folder, tag = ("database", "db") if kind == "database" else (QUERY_DIR, "q")
            name = f"{folder}/{utm_name(view, heading, f'{tag}{counts[kind]:04d}')}"
            counts[kind] += 1
            _copy_jpeg(render / "images" / rendered, out / "images" / split / name)
            names.append(name)
        replace_dir(out, scene_dir)
    finally:
        for path in (out, render):
            shutil.rmtree(path, ignore_errors=True)
    scene.names, scene.path = names, scene_dir
    logger.info("%s: VPR street of %d database and %d query images", scene_dir, counts["database"], counts["query"])
    return scene


def pick_queries(scene: synthetic.Scene, num_queries: int) -> np.ndarray:
    """Indices of the query views: target views first (one per look-at target), then the others."""
    target = [k for k, v in enumerate(scene.views) if v.kind == "target"]
    rest = [k for k in range(len(scene.views)) if k not in target]
    return np.sort(np.array((target + rest)[:num_queries], np.int64))


def box_overlap(query_obs: tuple[np.ndarray, np.ndarray], box: np.ndarray,
                db_obs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Co-visibility overlap of the points a query sees inside `box` with each database image's points."""
    ids, xy = query_obs
    inside = (xy[:, 0] >= box[0]) & (xy[:, 0] < box[2]) & (xy[:, 1] >= box[1]) & (xy[:, 1] < box[3])
    return covisibility_overlap([ids[inside]] + [d for d, _ in db_obs])[0, 1:]


def generate_revisitop(scene_dir: str | Path, seed: int, conf: SyntheticConf) -> synthetic.Scene:
    """A synthetic landmark set in revisitop's layout (module docstring) at `scene_dir`, replacing it."""
    scene_dir = Path(scene_dir)
    name = scene_dir.name
    out, render = _workdir(scene_dir)
    try:
        scene = _render(render, seed, conf)
        queries = pick_queries(scene, max(2, conf.num_images // 6))
        database = np.setdiff1d(np.arange(len(scene.views)), queries)
        stems = [f"{name}_{k:04d}" for k in range(len(scene.views))]
        obs = _observations(render / synthetic.MODEL_DIR, scene.names)
        box = np.array([BBX_MARGIN * conf.width, BBX_MARGIN * conf.height,
                        (1 - BBX_MARGIN) * conf.width, (1 - BBX_MARGIN) * conf.height])
        gnd = []
        for q in queries:
            overlap = box_overlap(obs[q], box, [obs[d] for d in database])
            gnd.append({"bbx": box.tolist(), "easy": np.flatnonzero(overlap >= EASY).tolist(),
                        "hard": np.flatnonzero((overlap >= HARD) & (overlap < EASY)).tolist(),
                        "junk": np.flatnonzero((overlap >= JUNK) & (overlap < HARD)).tolist()})
        for k, rendered in enumerate(scene.names):
            _copy_jpeg(render / "images" / rendered, out / "jpg" / f"{stems[k]}.jpg")
        data = {"imlist": [stems[d] for d in database], "qimlist": [stems[q] for q in queries], "gnd": gnd}
        with atomic_path(out / gnd_file(name)) as tmp:
            tmp.write_bytes(pickle.dumps(data, protocol=4))
        replace_dir(out, scene_dir)
    finally:
        for path in (out, render):
            shutil.rmtree(path, ignore_errors=True)
    scene.names, scene.path = stems, scene_dir
    logger.info("%s: %d database images, %d queries", scene_dir, len(database), len(queries))
    return scene


def generate_image_list(scene_dir: str | Path, seed: int, conf: SyntheticConf) -> synthetic.Scene:
    """A synthetic image list with ground-truth pairs (module docstring) at `scene_dir`, replacing it."""
    scene_dir = Path(scene_dir)
    out, render = _workdir(scene_dir)
    try:
        scene = _render(render, seed, conf)
        obs = _observations(render / synthetic.MODEL_DIR, scene.names)
        overlap = covisibility_overlap([ids for ids, _ in obs])
        names = [f"images/{scene_dir.name}_{k:04d}.jpg" for k in range(len(scene.names))]
        for rendered, listed in zip(scene.names, names, strict=True):
            _copy_jpeg(render / "images" / rendered, out / listed)
        (out / "image_list.txt").write_text("".join(f"{n}\n" for n in names))
        i, j = np.nonzero((overlap >= PAIR_OVERLAP) & ~np.eye(len(names), dtype=bool))
        (out / "gt_pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in zip(i, j, strict=True)))
        replace_dir(out, scene_dir)
    finally:
        for path in (out, render):
            shutil.rmtree(path, ignore_errors=True)
    scene.names, scene.path = names, scene_dir
    logger.info("%s: %d images, %d ground-truth pairs", scene_dir, len(names), len(i))
    return scene


def _seed(conf: SyntheticConf, scene: str) -> int:
    """A scene's seed from the dataset seed and its name, as the `synthetic` source derives it."""
    return zlib.crc32(f"{conf.seed}/{scene}".encode())


@dataclass(frozen=True, kw_only=True)
class SyntheticVprOptions(VprOptions):
    synthetic: SyntheticConf = SyntheticConf()


@dataclass(frozen=True, kw_only=True)
class SyntheticOnlyOptions(Conf):
    synthetic: SyntheticConf = SyntheticConf()


class SyntheticVprScene(VprScene):
    """A generated street read by the VPR reader."""

    source = "synthetic_vpr"
    Options = SyntheticVprOptions
    generated = True
    single_scene = False

    def generate(self) -> synthetic.Scene:
        conf = self.options.synthetic
        return generate_vpr(self.scene_dir, _seed(conf, self.scene), conf, self.options.split)


class SyntheticRevisitopScene(RevisitopScene):
    """A generated landmark set read by the revisitop reader."""

    source = "synthetic_revisitop"
    Options = SyntheticOnlyOptions
    generated = True
    url = None
    default_scenes = ()

    @classmethod
    def archive_parts(cls, scene: str) -> list:
        return []

    def generate(self) -> synthetic.Scene:
        conf = self.options.synthetic
        return generate_revisitop(self.scene_dir, _seed(conf, self.scene), conf)


class SyntheticImageListScene(ImageListScene):
    """A generated image list with ground-truth pairs, read by the image-list reader."""

    source = "synthetic_image_list"
    Options = SyntheticOnlyOptions
    generated = True
    single_scene = False

    @classmethod
    def has_ground_truth(cls, options) -> bool:
        return True

    @property
    def list_path(self) -> Path:
        return self.scene_dir / "image_list.txt"

    @property
    def gt_pairs_path(self) -> Path:
        return self.scene_dir / "gt_pairs.txt"

    def generate(self) -> synthetic.Scene:
        conf = self.options.synthetic
        return generate_image_list(self.scene_dir, _seed(conf, self.scene), conf)


__all__ = ["SyntheticImageListScene", "SyntheticRevisitopScene", "SyntheticVprScene", "build_street"]
