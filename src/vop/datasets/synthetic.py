"""Offline synthetic scenes in the ETH3D layout, with exact ground truth.

A scene is a closed room (floor, four walls, ceiling) with a few boxes standing in it; every surface is a
planar quad covered by a mosaic of crops of the real photographs that ship inside scikit-image. Images are
rendered by ray casting (every pixel against every quad, nearest hit wins), so depth and visibility are
exact. Cameras look at a few targets from varied distances, heights and focal lengths, and a few look
elsewhere, so a scene holds pairs of every overlap from none to nearly full, with occlusions by the boxes.

Written exactly like one scene of ETH3D's undistorted release (see vop.datasets.eth3d), and read by the
same reader (`SyntheticScene` is the ETH3D reader plus the generator)::

    {out}/images/dslr_images_undistorted/IMG_0000.JPG              JPEG, quality 95
    {out}/dslr_calibration_undistorted/{cameras,images,points3D}.txt   PINHOLE cameras, COLMAP text
    {out}/ground_truth_depth/dslr_images_undistorted/IMG_0000.JPG  raw float32 (height, width) z-depth

The 3D points are random points on the surfaces (`points_per_m2`); a point is observed by an image where it
projects inside the image, in front of the camera, and agrees with the rendered depth at that pixel (so it
is not occluded). Every observed point is kept, also those seen by one image only, so the co-visibility
overlap |P_i & P_j| / min(|P_i|, |P_j|) measures shared visible surface without a triangulation bias.

World frame: z up, the floor is z = 0. Same seed and arguments -> byte-identical files.

    vop generate resources/synthetic/scene0 --seed 0 --num-images 24
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vop.conf import Conf, SyntheticConf
from vop.datasets import colmap, eth3d
from vop.geometry import qvec_to_rotmat, rotmat_to_qvec
from vop.io import replace_dir
from vop.progress import progress

logger = logging.getLogger(__name__)

# Photographs and scans shipped inside scikit-image's wheel (no pooch download needed). The two lists are
# disjoint so an encoder trained on TRAIN scenes is evaluated on textures it never saw; near-duplicates
# (motorcycle_left/right, chelsea/cat) stay on one side.
TEXTURE_FILES = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock_motion": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
EVAL_TEXTURES = ("brick", "gravel", "coffee", "astronaut", "camera", "rocket", "text", "coins", "retina")
TRAIN_TEXTURES = (
    "grass", "chelsea", "moon", "page", "hubble_deep_field", "motorcycle_left", "motorcycle_right", "ihc",
    "cell", "clock_motion",
)

IMAGE_DIR = f"{eth3d.IMAGES_SUBDIR}/dslr_images_undistorted"
MODEL_DIR = eth3d.MODEL_SUBDIR
DEPTH_DIR = eth3d.DEPTH_SUBDIR

DEPTH_TOLERANCE = 0.008  # relative: a point is visible where the rendered depth agrees this well
_MIN_CLEARANCE = 0.35  # metres between a camera and any wall or box


# ---------------------------------------------------------------------------------------------
# Textures


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_texture(name: str) -> np.ndarray:
    """A texture by name as a BGR uint8 image (H,W,3), read from scikit-image's own files."""
    if name not in TEXTURE_FILES:
        raise KeyError(f"unknown texture {name!r}; choose from {sorted(TEXTURE_FILES)}")
    from PIL import Image  # a dependency of scikit-image; quiet where libpng would warn about ICC profiles

    path = skimage_data_dir() / TEXTURE_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: texture {name!r} missing from this scikit-image install (it ships inside the wheel); "
            "reinstall scikit-image from PyPI or choose other textures"
        )
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def _mosaic(rng, sources: list[tuple[np.ndarray, bool]], width_m: float, height_m: float, texels_per_m: float,
            tile_m: float) -> np.ndarray:
    """A texture for a quad of width_m x height_m: a grid of tiles, each a random crop of a source.

    Crops vary in size (so in magnification), flips and tint, so the few source photographs repeat as
    little as possible; tile edges add the kind of structure found on real walls (panels, posters).
    """
    width_px = max(8, int(round(width_m * texels_per_m)))
    height_px = max(8, int(round(height_m * texels_per_m)))
    nx = max(1, int(round(width_m / tile_m)))
    ny = max(1, int(round(height_m / tile_m)))
    xs = np.linspace(0, width_px, nx + 1).round().astype(int)
    ys = np.linspace(0, height_px, ny + 1).round().astype(int)
    out = np.empty((height_px, width_px, 3), np.uint8)
    order = rng.permutation(len(sources))
    for k, (i, j) in enumerate((i, j) for i in range(ny) for j in range(nx)):
        src, is_gray = sources[order[k % len(sources)]]
        tile_w, tile_h = xs[j + 1] - xs[j], ys[i + 1] - ys[i]
        # A crop with the tile's aspect ratio, magnified 0.5x-1.5x where the source is large enough, so
        # that texture detail stays sharp: small sources are used whole.
        scale = min(rng.uniform(0.67, 2.0), src.shape[0] / tile_h, src.shape[1] / tile_w)
        crop_w = max(4, min(src.shape[1], int(tile_w * scale)))
        crop_h = max(4, min(src.shape[0], int(tile_h * scale)))
        x0 = rng.integers(0, src.shape[1] - crop_w + 1)
        y0 = rng.integers(0, src.shape[0] - crop_h + 1)
        crop = src[y0:y0 + crop_h, x0:x0 + crop_w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        interp = cv2.INTER_AREA if crop_w > tile_w else cv2.INTER_CUBIC
        tile = cv2.resize(np.ascontiguousarray(crop), (int(tile_w), int(tile_h)), interpolation=interp)
        # Grey photographs get a colour tint, colour ones a brightness change.
        tint = rng.uniform(0.7, 1.1, 3) if is_gray else rng.uniform(0.85, 1.1) * np.ones(3)
        out[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = np.clip(tile * tint, 0, 255).astype(np.uint8)
    return out


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    levels = [image]
    while min(levels[-1].shape[:2]) >= 16:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass
class Quads:
    """Planar rectangles: corner (top-left seen from the visible side), right and down edge vectors."""

    corner: np.ndarray  # (Q,3)
    right: np.ndarray  # (Q,3)
    down: np.ndarray  # (Q,3)
    names: list[str]
    textures: list[list[np.ndarray]] = field(default_factory=list)  # per quad: mip pyramid (BGR uint8)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.down, self.right)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    @property
    def size(self) -> np.ndarray:
        """(Q,2) width and height in metres."""
        return np.stack([np.linalg.norm(self.right, axis=1), np.linalg.norm(self.down, axis=1)], 1)

    def point(self, q, a, b) -> np.ndarray:
        """World points at quad coordinates (a, b) in [0,1]^2 (a along right, b along down)."""
        q = np.asarray(q)
        return self.corner[q] + np.asarray(a)[..., None] * self.right[q] + np.asarray(b)[..., None] * self.down[q]


def _face(center, normal, up, width, height):
    """Corner, right, down of a quad facing `normal`, upright with respect to `up` (unit vectors)."""
    center, normal, up = (np.asarray(v, np.float64) for v in (center, normal, up))
    right = np.cross(-normal, up)
    return center - right * width / 2 + up * height / 2, right * width, -up * height


@dataclass
class Box:
    center: np.ndarray  # (2,) x, y on the floor
    half: np.ndarray  # (2,) half extents along its own axes
    height: float
    yaw: float

    def axes(self) -> np.ndarray:
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, s], [-s, c]])

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which (M,3) points lie inside the box grown by `margin`."""
        local = (points[:, :2] - self.center) @ self.axes().T
        inside = np.all(np.abs(local) <= self.half + margin, axis=1)
        return inside & (points[:, 2] <= self.height + margin)


@dataclass
class View:
    """One camera: intrinsics and world-to-camera pose (COLMAP conventions)."""

    K: np.ndarray  # (3,3)
    qvec: np.ndarray  # (4,) w, x, y, z
    tvec: np.ndarray  # (3,)
    width: int
    height: int
    kind: str  # "target" or "free"

    @property
    def R(self) -> np.ndarray:
        # Rendering uses the rotation as read back from qvec, so the written model matches bit for bit.
        return qvec_to_rotmat(self.qvec)

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.tvec


@dataclass
class Scene:
    room: np.ndarray  # (3,) width (x), depth (y), height (z) in metres
    boxes: list[Box]
    quads: Quads
    views: list[View]
    names: list[str]  # image names as in images.txt
    points3D: np.ndarray | None = None  # (P,3) after generation: the observed surface points
    path: Path | None = None


def _build_room(rng, sources, texels_per_m) -> tuple[np.ndarray, list[Box], Quads]:
    W, D, H = rng.uniform(7.0, 10.0), rng.uniform(5.5, 8.0), rng.uniform(3.0, 4.0)
    x, y, z = np.eye(3)
    faces = [  # (name, center, normal, up, width, height, tile size in metres)
        ("floor", (W / 2, D / 2, 0), z, y, W, D, 1.6),
        ("ceiling", (W / 2, D / 2, H), -z, y, W, D, 2.0),
        ("wall_south", (W / 2, 0, H / 2), y, z, W, H, 1.4),
        ("wall_north", (W / 2, D, H / 2), -y, z, W, H, 1.4),
        ("wall_west", (0, D / 2, H / 2), x, z, D, H, 1.4),
        ("wall_east", (W, D / 2, H / 2), -x, z, D, H, 1.4),
    ]
    boxes: list[Box] = []
    for _ in range(200):
        if len(boxes) == 3:
            break
        half = rng.uniform(0.3, 0.9, 2)
        box = Box(np.array([rng.uniform(1.2, W - 1.2), rng.uniform(1.2, D - 1.2)]), half,
                  float(rng.uniform(0.7, min(2.4, H - 0.6))), float(rng.uniform(0, np.pi / 2)))
        radius = np.linalg.norm(half)
        # Keep boxes apart (room to place cameras between them) and off the walls.
        if all(np.linalg.norm(box.center - b.center) > radius + np.linalg.norm(b.half) + 1.0 for b in boxes) \
                and np.all(box.center - radius > 0.8) and np.all(box.center + radius < np.array([W, D]) - 0.8):
            boxes.append(box)
    for k, box in enumerate(boxes):
        (e1, e2) = box.axes()
        e1, e2 = np.append(e1, 0.0), np.append(e2, 0.0)
        base = np.append(box.center, 0.0)
        h = box.height
        for axis, half_along, half_across in ((e1, *box.half), (e2, *box.half[::-1])):
            for sign in (1, -1):
                faces.append((f"box{k}_side", base + sign * axis * half_along + z * h / 2, sign * axis, z,
                              2 * half_across, h, 1.2))
        faces.append((f"box{k}_top", base + z * h, z, e2, 2 * box.half[0], 2 * box.half[1], 1.2))

    corners, rights, downs, names, textures = [], [], [], [], []
    for name, center, normal, up, width, height, tile_m in faces:
        c, r, d = _face(center, normal, up, width, height)
        corners.append(c)
        rights.append(r)
        downs.append(d)
        names.append(name)
        textures.append(_pyramid(_mosaic(rng, sources, width, height, texels_per_m, tile_m)))
    quads = Quads(np.array(corners), np.array(rights), np.array(downs), names, textures)
    return np.array([W, D, H]), boxes, quads


# ---------------------------------------------------------------------------------------------
# Ray casting and rendering


@dataclass
class Hits:
    depth: np.ndarray  # (H,W) z in the camera frame (inf: no surface)
    quad: np.ndarray  # (H,W) index of the quad hit (-1: none)
    a: np.ndarray  # (H,W) quad coordinates of the hit
    b: np.ndarray
    footprint: np.ndarray  # (H,W) size of the pixel on the surface, in metres


def _clip_near(points: np.ndarray, near: float) -> np.ndarray:
    """Clip a convex polygon (M,3) in camera coordinates to z >= near (Sutherland-Hodgman, one plane)."""
    out = []
    for p, q in zip(points, np.roll(points, -1, axis=0)):
        if p[2] >= near:
            out.append(p)
        if (p[2] >= near) != (q[2] >= near):
            out.append(p + (near - p[2]) / (q[2] - p[2]) * (q - p))
    return np.array(out).reshape(-1, 3)


def raycast(quads: Quads, K, R, t, width: int, height: int, near: float = 1e-3) -> Hits:
    """Nearest quad hit by the ray of every pixel centre (COLMAP: pixel (0,0) spans [0,1)^2).

    Exact ray-plane intersections, but each quad only tests the pixels inside the bounding box of its
    projection (clipped to the near plane), with a depth buffer keeping the nearest hit.
    """
    R, t, K = np.asarray(R, np.float64), np.asarray(t, np.float64), np.asarray(K, np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    xs = (np.arange(width) + 0.5 - cx) / fx  # rays (x, y, 1): a hit's ray parameter is its z-depth
    ys = (np.arange(height) + 0.5 - cy) / fy
    corner = quads.corner @ R.T + t
    right, down = quads.right @ R.T, quads.down @ R.T
    normal = quads.normal @ R.T
    right_dual = right / np.einsum("qk,qk->q", right, right)[:, None]
    down_dual = down / np.einsum("qk,qk->q", down, down)[:, None]
    plane_offset = np.einsum("qk,qk->q", corner, normal)

    depth = np.full((height, width), np.inf)
    quad = np.full((height, width), -1, np.int64)
    a_hit, b_hit = np.zeros((height, width)), np.zeros((height, width))
    with np.errstate(divide="ignore", invalid="ignore"):
        for q in range(len(corner)):
            poly = _clip_near(np.stack([corner[q], corner[q] + right[q], corner[q] + right[q] + down[q],
                                        corner[q] + down[q]]), near)
            if len(poly) == 0:
                continue
            u = fx * poly[:, 0] / poly[:, 2] + cx
            v = fy * poly[:, 1] / poly[:, 2] + cy
            c0, c1 = max(0, int(np.floor(u.min())) - 1), min(width, int(np.ceil(u.max())) + 1)
            r0, r1 = max(0, int(np.floor(v.min())) - 1), min(height, int(np.ceil(v.max())) + 1)
            if c0 >= c1 or r0 >= r1:
                continue
            x, y = xs[None, c0:c1], ys[r0:r1, None]
            z = plane_offset[q] / (normal[q, 0] * x + normal[q, 1] * y + normal[q, 2])
            a = z * (right_dual[q, 0] * x + right_dual[q, 1] * y + right_dual[q, 2]) - corner[q] @ right_dual[q]
            b = z * (down_dual[q, 0] * x + down_dual[q, 1] * y + down_dual[q, 2]) - corner[q] @ down_dual[q]
            block = np.s_[r0:r1, c0:c1]
            closer = (z > near) & (z < depth[block]) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
            depth[block][closer] = z[closer]
            quad[block][closer] = q
            a_hit[block][closer] = a[closer]
            b_hit[block][closer] = b[closer]
    # Pixel footprint on the surface: z / f, stretched by the off-axis angle and the incidence.
    rays = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], 1.0), -1)
    ray_norm = np.linalg.norm(rays, axis=-1)
    cos_hit = np.abs(np.einsum("hwk,hwk->hw", rays, normal[quad.clip(0)])) / ray_norm
    footprint = depth / np.sqrt(fx * fy) * np.sqrt(1.0 / ray_norm / np.maximum(cos_hit, 0.05))
    return Hits(depth, quad, a_hit, b_hit, footprint)


def _sample(texture: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (a, b) in [0,1]^2; returns (M,3) float32."""
    m = len(a)
    cols = 1024  # cv2.remap wants maps smaller than 32767 in each dimension
    rows = -(-m // cols)
    map_x = np.zeros(rows * cols, np.float32)
    map_y = np.zeros(rows * cols, np.float32)
    map_x[:m] = a * texture.shape[1] - 0.5
    map_y[:m] = b * texture.shape[0] - 0.5
    out = cv2.remap(texture, map_x.reshape(rows, cols), map_y.reshape(rows, cols), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT_101)
    return out.reshape(-1, 3)[:m].astype(np.float32)


def shade(quads: Quads, hits: Hits, texels_per_m: float) -> np.ndarray:
    """Trilinear (mip-mapped) texture colour of every pixel: (H,W,3) float32 BGR in [0,255]."""
    h, w = hits.depth.shape
    image = np.zeros((h * w, 3), np.float32)
    quad = hits.quad.ravel()
    lod = np.log2(np.maximum(hits.footprint.ravel() * texels_per_m, 1e-6))
    a, b = hits.a.ravel(), hits.b.ravel()
    order = np.argsort(quad, kind="stable")
    bounds = np.searchsorted(quad[order], np.arange(len(quads.names) + 1))
    for q in range(len(quads.names)):
        idx = order[bounds[q]:bounds[q + 1]]
        if len(idx) == 0:
            continue
        pyramid = quads.textures[q]
        top = len(pyramid) - 1
        level = np.clip(lod[idx], 0, top)
        lower = np.minimum(np.floor(level).astype(int), max(top - 1, 0))
        frac = np.clip(level - lower, 0, 1)[:, None].astype(np.float32)
        for lv in np.unique(lower):
            sel = lower == lv
            ids = idx[sel]
            fine = _sample(pyramid[lv], a[ids], b[ids])
            coarse = _sample(pyramid[min(lv + 1, top)], a[ids], b[ids])
            image[ids] = fine * (1 - frac[sel]) + coarse * frac[sel]
    return image.reshape(h, w, 3)


def photometric(rng, image: np.ndarray) -> np.ndarray:
    """Per-image exposure, gamma, white balance, mild blur and noise, as between real photos."""
    gain = rng.uniform(0.75, 1.25)
    gamma = rng.uniform(0.8, 1.25)
    balance = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    out = 255.0 * (np.clip(image, 0, 255) / 255.0) ** gamma * gain * balance
    if rng.random() < 0.4:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 1.0))
    out = out + rng.normal(0.0, rng.uniform(0.5, 2.5), out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Cameras


def _look_at(center, target, roll) -> np.ndarray:
    """World-to-camera rotation (rows: right, down, forward) looking from center at target."""
    forward = target - center
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * right + s * down, -s * right + c * down, forward])


def _inside_free_space(room, boxes, points, margin) -> np.ndarray:
    inside = np.all((points >= margin) & (points <= room - margin), axis=1)
    for box in boxes:
        inside &= ~box.contains(points, margin)
    return inside


def _pick_targets(rng, room, quads, boxes, count) -> list[tuple[np.ndarray, np.ndarray]]:
    """Look-at points (point, surface normal) on walls, box sides and the floor, facing apart."""
    H = room[2]
    candidates = [i for i, n in enumerate(quads.names) if n.startswith("wall") or n.endswith("side")]
    targets: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(500):
        if len(targets) == count:
            break
        use_floor = rng.random() < 0.12
        q = quads.names.index("floor") if use_floor else candidates[rng.integers(len(candidates))]
        normal = quads.normal[q]
        # Targets face different ways for the first few so that their groups do not overlap.
        if len(targets) < 3 and any(normal @ n > 0.1 for _, n in targets):
            continue
        a, b = rng.uniform(0.15, 0.85, 2)
        point = quads.point(q, a, b)
        if quads.names[q].startswith("wall"):
            point[2] = rng.uniform(0.6, min(2.4, H - 0.6))
        # The target must be reachable: some free space in front of it.
        if not _inside_free_space(room, boxes, (point + 0.8 * normal)[None], 0.2)[0]:
            continue
        targets.append((point, normal))
    if len(targets) < count:
        raise RuntimeError("could not place camera targets; try another seed")
    return targets


def _place_views(rng, room, boxes, quads, num_images, width, height, texels_per_m) -> list[View]:
    H = room[2]
    num_targets = max(2, int(np.ceil(num_images / 8)))
    targets = _pick_targets(rng, room, quads, boxes, num_targets)
    probe_w, probe_h = 48, max(8, int(round(48 * height / width)))
    views = []
    for k in range(num_images):
        free = num_images > 3 and rng.random() < 0.15
        point, normal = targets[k % num_targets]
        for _attempt in range(400):
            if free:
                center = rng.uniform([0, 0, 0.8], [room[0], room[1], min(2.2, H - 0.5)])
                azimuth, pitch = rng.uniform(0, 2 * np.pi), rng.uniform(-0.5, 0.2)
                look = center + np.array([np.cos(azimuth) * np.cos(pitch), np.sin(azimuth) * np.cos(pitch),
                                          np.sin(pitch)])
                focal = np.exp(rng.uniform(np.log(0.55), np.log(1.1)))
            else:
                distance = np.exp(rng.uniform(np.log(0.9), np.log(6.0)))
                if abs(normal[2]) > 0.5:  # floor target: stand around it, look down
                    azimuth = rng.uniform(0, 2 * np.pi)
                    horizontal = np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
                    center = point + horizontal * distance
                    center[2] = rng.uniform(1.3, min(2.3, H - 0.4))
                else:
                    azimuth = rng.uniform(-1.15, 1.15)
                    c, s = np.cos(azimuth), np.sin(azimuth)
                    horizontal = np.array([c * normal[0] - s * normal[1], s * normal[0] + c * normal[1], 0.0])
                    center = point + horizontal * distance
                    center[2] = rng.uniform(0.7, min(2.3, H - 0.4))
                look = point + rng.normal(0, 0.2, 3)
                # From wide (84 deg) to tele (30 deg); the footprint check below keeps tele lenses away
                # from close range, so tele views are detail shots from afar.
                focal = np.exp(rng.uniform(np.log(0.55), np.log(1.9)))
            if not _inside_free_space(room, boxes, center[None], _MIN_CLEARANCE)[0]:
                continue
            direction = look - center
            if abs(direction[2]) > 0.9 * np.linalg.norm(direction):
                continue
            R = _look_at(center, look, rng.normal(0, 0.06))
            qvec = rotmat_to_qvec(R)
            R = qvec_to_rotmat(qvec)
            tvec = -R @ center
            # A coarse render must see no surface too close (the camera would face a wall or box).
            K_probe = np.array([[focal * probe_w, 0, probe_w / 2], [0, focal * probe_w, probe_h / 2], [0, 0, 1]])
            probe = raycast(quads, K_probe, R, tvec, probe_w, probe_h)
            if not np.isfinite(probe.depth).all() or probe.depth.min() < 0.4:
                continue
            # Pixels no smaller than half a texel: closer or longer lenses would only see blur.
            if np.median(probe.depth) / (focal * width) < 0.5 / texels_per_m:
                continue
            if not free:  # the look-at point itself must not be hidden behind a box
                pc = R @ point + tvec
                u = int(np.floor(K_probe[0, 0] * pc[0] / pc[2] + K_probe[0, 2]))
                v = int(np.floor(K_probe[1, 1] * pc[1] / pc[2] + K_probe[1, 2]))
                if not (pc[2] > 0 and 0 <= u < probe_w and 0 <= v < probe_h
                        and probe.depth[v, u] > 0.9 * pc[2]):
                    continue
            K = np.array([[focal * width, 0, width / 2], [0, focal * width, height / 2], [0, 0, 1]])
            views.append(View(K, qvec, tvec, width, height, "free" if free else "target"))
            break
        else:
            raise RuntimeError(f"could not place camera {k} in this room; try another seed")
    return views


# ---------------------------------------------------------------------------------------------
# Points and observations


def sample_surface_points(rng, quads: Quads, points_per_m2: float) -> np.ndarray:
    """Uniform random points on every quad, `points_per_m2` of them per square metre: (P,3)."""
    area = np.prod(quads.size, axis=1)
    counts = np.maximum(1, np.round(area * points_per_m2).astype(int))
    q = np.repeat(np.arange(len(counts)), counts)
    a, b = rng.random(len(q)), rng.random(len(q))
    return quads.point(q, a, b)


def observe(points: np.ndarray, view: View, depth: np.ndarray, tolerance: float = DEPTH_TOLERANCE):
    """Which points the view sees (inside, in front, not occluded) and where: (mask (P,), xy (P,2))."""
    cam = points @ view.R.T + view.tvec
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = cam[:, :2] / z[:, None] * np.diag(view.K)[:2] + view.K[:2, 2]
    inside = (z > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < view.width) & (xy[:, 1] >= 0) & (xy[:, 1] < view.height)
    col = np.clip(np.floor(xy[:, 0]), 0, view.width - 1).astype(int)
    row = np.clip(np.floor(xy[:, 1]), 0, view.height - 1).astype(int)
    rendered = depth[row, col].astype(np.float64)
    visible = inside & (np.abs(rendered - z) <= tolerance * z)
    return visible, xy


# ---------------------------------------------------------------------------------------------
# The scene


def build_scene(seed: int, num_images: int = 24, width: int = 640, height: int = 480,
                textures: list[str] | tuple[str, ...] | None = None, texels_per_m: float = 256.0) -> Scene:
    """The room, its boxes, textured quads and cameras of one seed (nothing rendered or written)."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if width < 16 or height < 16:
        raise ValueError(f"image size {width}x{height} is too small (at least 16x16)")
    textures = list(EVAL_TEXTURES if textures is None else textures)
    if not textures:
        raise ValueError("textures is empty: give at least one name from TEXTURE_FILES")
    rng = np.random.default_rng(seed)
    sources = []
    for name in textures:
        image = load_texture(name)
        sources.append((image, bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())))
    room, boxes, quads = _build_room(rng, sources, texels_per_m)
    views = _place_views(rng, room, boxes, quads, num_images, width, height, texels_per_m)
    names = [f"dslr_images_undistorted/IMG_{k:04d}.JPG" for k in range(num_images)]
    return Scene(room, boxes, quads, views, names)


def generate_scene(out_dir: str | Path, seed: int, num_images: int = 24, width: int = 640, height: int = 480,
                   textures: list[str] | tuple[str, ...] | None = None, points_per_m2: float = 80.0,
                   texels_per_m: float = 256.0, jpeg_quality: int = 95, overwrite: bool = False,
                   scene: Scene | None = None) -> Scene:
    """Render one scene into `out_dir` in the ETH3D layout; returns the scene (geometry, views, points).

    Everything is written into a temporary directory beside `out_dir` that is renamed at the end, so an
    interrupted run leaves nothing half-written. `textures=None` uses EVAL_TEXTURES. `scene` renders a
    scene built elsewhere (its views' sizes must be width x height) instead of this seed's room.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists: delete it or pass overwrite=True (--overwrite)")
    start = time.perf_counter()
    if scene is None:
        scene = build_scene(seed, num_images, width, height, textures, texels_per_m)
    num_images = len(scene.views)
    ss = np.random.SeedSequence(seed)
    point_rng, *image_rngs = (np.random.default_rng(s) for s in ss.spawn(num_images + 1))
    points = sample_surface_points(point_rng, scene.quads, points_per_m2)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / IMAGE_DIR).mkdir(parents=True)
        (tmp / DEPTH_DIR).mkdir(parents=True)
        visible, xys, colours = [], [], np.zeros((len(points), 3), np.uint8)
        seen = np.zeros(len(points), bool)
        views = progress(zip(scene.views, scene.names), len(scene.names), "render", "images", logger=logger)
        for k, (view, name) in enumerate(views):
            hits = raycast(scene.quads, view.K, view.R, view.tvec, width, height)
            depth = hits.depth.astype(np.float32)  # as written: visibility is judged on the file's values
            image = photometric(image_rngs[k], shade(scene.quads, hits, texels_per_m))
            ok, buf = cv2.imencode(".JPG", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {name}")
            (tmp / "images" / name).write_bytes(buf.tobytes())
            depth.tofile(tmp / DEPTH_DIR / Path(name).name)
            mask, xy = observe(points, view, depth)
            first = mask & ~seen
            px = np.floor(xy[first]).astype(int)
            colours[first] = image[px[:, 1], px[:, 0], ::-1]  # BGR -> RGB
            seen |= mask
            visible.append(mask)
            xys.append(xy)
            logger.debug("%s: %d points visible, %.2fs", name, int(mask.sum()), time.perf_counter() - start)

        # Keep observed points only, numbered 1.. in sampling order.
        keep = np.flatnonzero(seen)
        new_id = np.zeros(len(points), np.int64)
        new_id[keep] = np.arange(1, len(keep) + 1)
        # Tracks: every observation (image, index in that image), grouped by point, images in order.
        obs_point = np.concatenate([new_id[np.flatnonzero(m)] for m in visible])
        obs_image = np.concatenate([np.full(m.sum(), k) for k, m in enumerate(visible)]).astype(np.int64)
        obs_index = np.concatenate([np.arange(m.sum()) for m in visible]).astype(np.int64)
        order = np.argsort(obs_point, kind="stable")
        splits = np.cumsum(np.bincount(obs_point, minlength=len(keep) + 1))[:-1]
        tracks = np.split(np.stack([obs_image[order], obs_index[order]], 1), splits)[1:]
        colmap.write_model(colmap.ModelArrays(
            names=list(scene.names), K=np.stack([v.K for v in scene.views]),
            size=np.tile([width, height], (num_images, 1)), qvec=np.stack([v.qvec for v in scene.views]),
            tvec=np.stack([v.tvec for v in scene.views]), xys=[xy[m] for xy, m in zip(xys, visible)],
            xyz=points[keep], rgb=colours[keep], tracks=tracks), tmp / MODEL_DIR)

        replace_dir(tmp, out_dir)  # with overwrite: swap in the new scene, then drop the old one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    scene.points3D = points[keep]
    scene.path = out_dir
    logger.info("%s: %d images, %d points in %.2fs", out_dir, num_images, len(keep), time.perf_counter() - start)
    return scene


@dataclass(frozen=True, kw_only=True)
class SyntheticOptions(Conf):
    """`datasets.<name>` keys of a synthetic dataset."""

    synthetic: SyntheticConf = SyntheticConf()


class SyntheticScene(eth3d.Eth3dScene):
    """A generated scene: the ETH3D reader over what `generate` renders into the scene folder."""

    source = "synthetic"
    Options = SyntheticOptions
    generated = True
    url = None
    resources_root = ""
    default_scenes = ()

    @classmethod
    def archive_parts(cls, scene: str) -> list:
        return []

    def generate(self) -> Scene:
        """Render the scene into its folder, replacing what is there."""
        conf = self.options.synthetic
        # A scene's seed follows from the dataset seed and the scene's name, not its position in the list.
        seed = zlib.crc32(f"{conf.seed}/{self.scene}".encode())
        textures = TRAIN_TEXTURES if conf.textures == "train" else EVAL_TEXTURES
        return generate_scene(self.scene_dir, seed=seed, num_images=conf.num_images, width=conf.width,
                              height=conf.height, textures=textures, overwrite=True)
