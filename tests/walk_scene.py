"""A synthetic walk for the pycolmap tests: cameras on an arc around one box of a synthetic room.

vop.datasets.synthetic places its cameras around targets that face apart, so its scenes fall into groups
that share nothing (by design: every overlap from none to full). SfM tests need one connected capture: here
the room, boxes and textures of `synthetic.build_scene` are kept and the cameras replaced by a walk around
a box, all looking at it, rendered with the same ray caster. The true tracks come from random surface
points, observed as `synthetic.observe` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vop.datasets import synthetic
from vop.geometry import covisibility_overlap, qvec_to_rotmat, rotmat_to_qvec
from vop.io import GroundTruth


@dataclass
class Walk:
    gt: GroundTruth  # overlap: co-visibility of the true tracks
    image_dir: Path
    point_ids: list[np.ndarray]  # true tracks: the surface points each image sees


def render_walk(out_dir: Path, seed: int = 0, num_images: int = 10, width: int = 640, height: int = 480,
                points_per_m2: float = 80.0) -> Walk:
    """Render the walk into out_dir/images/IMG_0000.png ... in walking order; exact poses, one K (77 degrees
    wide), and the co-visibility overlap of the true tracks as gt.overlap."""
    # Every texture: the fewer repeats of one photograph, the fewer false matches between unrelated views.
    scene = synthetic.build_scene(seed, num_images=2, width=width, height=height,
                                  textures=sorted(synthetic.TEXTURE_FILES))
    W, D, H = scene.room
    rng = np.random.default_rng(seed)
    focal = 0.8 * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    names, Ts = [], []
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    points = synthetic.sample_surface_points(rng, scene.quads, points_per_m2)
    visible = []
    probe_K = np.array([[0.8 * 48, 0, 24], [0, 0.8 * 48, 18], [0, 0, 1]])
    # An arc of 70 degrees around a box, facing it, on the side with the most room: the box, the floor and
    # the walls behind give depth (a flat wall alone leaves SfM a rotation-translation ambiguity). Heights
    # zig-zag; the first box and radius that keep every camera in free space and off any surface closer
    # than 0.6 m wins.
    jitter = [(0.25 * (-1) ** k + rng.uniform(-0.05, 0.05), rng.normal(0, 0.03)) for k in range(num_images)]
    room_center = np.array([W / 2, D / 2])
    poses = []
    for box in scene.boxes:
        away = box.center - room_center
        heading = np.arctan2(-away[1], -away[0]) if np.linalg.norm(away) > 0.1 else 0.0
        for radius in (2.5, 2.2, 2.8, 3.2, 1.9):
            poses = []
            for angle, (dz, roll) in zip(heading + np.radians(np.linspace(-35, 35, num_images)), jitter, strict=True):
                center = np.array([*(box.center + radius * np.array([np.cos(angle), np.sin(angle)])), 1.6 + dz])
                inside = np.all((center > 0.4) & (center < scene.room - 0.4))
                R = synthetic._look_at(center, np.array([*box.center, 0.6 * box.height]), roll)
                qvec = rotmat_to_qvec(R)
                R = qvec_to_rotmat(qvec)
                t = -R @ center
                if not inside or any(b.contains(center[None], 0.4)[0] for b in scene.boxes) or \
                        synthetic.raycast(scene.quads, probe_K, R, t, 48, 36).depth.min() < 0.6:
                    break
                poses.append((qvec, R, t))
            if len(poses) == num_images:
                break
        if len(poses) == num_images:
            break
    else:
        raise RuntimeError(f"seed {seed}: no clear arc around a box in this room; try another seed")
    for k, (qvec, R, t) in enumerate(poses):
        hits = synthetic.raycast(scene.quads, K, R, t, width, height)
        image = synthetic.photometric(rng, synthetic.shade(scene.quads, hits, 256.0))
        name = f"IMG_{k:04d}.png"
        cv2.imwrite(str(image_dir / name), image)
        view = synthetic.View(K, qvec, t, width, height, "target")
        visible.append(np.flatnonzero(synthetic.observe(points, view, hits.depth.astype(np.float32))[0]))
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        names.append(name)
        Ts.append(T)
    n = len(names)
    gt = GroundTruth(names, np.repeat(K[None], n, 0), np.stack(Ts), np.tile([width, height], (n, 1)),
                     covisibility_overlap(visible))
    return Walk(gt, image_dir, visible)
