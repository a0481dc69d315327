"""A synthetic walk for the pycolmap tests: cameras side by side facing one wall of a synthetic room.

vop.datasets.synthetic places its cameras around targets that face apart, so its scenes fall into groups
that share nothing (by design: every overlap from none to full). SfM tests need one connected capture: here
the room, boxes and textures of `synthetic.build_scene` are kept and the cameras replaced by a walk along
the room, all looking at the far wall (boxes in between occlude some of it), rendered with the same
ray caster. The true tracks come from random surface points, observed as `synthetic.observe` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vop.datasets import colmap, synthetic
from vop.io import GroundTruth


@dataclass
class Walk:
    gt: GroundTruth  # overlap: co-visibility of the true tracks
    image_dir: Path
    point_ids: list[np.ndarray]  # true tracks: the surface points each image sees


def render_walk(out_dir: Path, seed: int = 0, num_images: int = 10, width: int = 640, height: int = 480,
                points_per_m2: float = 80.0) -> Walk:
    """Render the walk into out_dir/images/IMG_0000.png ...; poses exact, K shared (77 degrees wide)."""
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
    for k, x in enumerate(np.linspace(0.3 * W, 0.7 * W, num_images)):
        # Zig-zag in depth and height, so the centres are not collinear (a similarity needs that).
        height_m = 1.5 + 0.25 * (-1) ** k + rng.uniform(-0.1, 0.1)
        for y in np.arange(0.55 * D, 0.5, -0.25) - 0.2 * (k % 2):
            center = np.array([x, y, height_m])
            target = np.array([x + rng.uniform(-0.3, 0.3), D, rng.uniform(1.3, 1.7)])
            R = synthetic._look_at(center, target, rng.normal(0, 0.03))
            qvec = colmap.rotmat_to_qvec(R)
            R = colmap.qvec_to_rotmat(qvec)
            t = -R @ center
            if any(box.contains(center[None], 0.4)[0] for box in scene.boxes):
                continue
            # The nearest 90% of a coarse render no closer than 60% of the wall: no box right in front.
            probe = synthetic.raycast(scene.quads, probe_K, R, t, 48, 36).depth
            if np.quantile(probe, 0.1) >= 0.6 * (D - y):
                break
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
                     colmap.covisibility_overlap(visible))
    return Walk(gt, image_dir, visible)
