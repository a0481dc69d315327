"""Figures of the overlap both ways round (vop.nso): predicted against true enclosure and concentration per
method, and a few retrieved pairs shown at the scale their predicted relative scale brings them to.

    rule nso_plots: results/{dataset}/plots/nso.png, nso_pairs.png
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vop.images import read_image
from vop.nso import downsampling, nso_errors
from vop.plots import _save


def _read_runs(runs: Sequence[dict]) -> dict[str, pd.DataFrame]:
    """{method: its overlap.csv rows over every scene, with the scene and its image folder}."""
    out: dict[str, list[pd.DataFrame]] = {}
    for run in runs:
        table = pd.read_csv(run["overlap_csv"], keep_default_na=False, na_values=[""])
        table["scene"], table["image_dir"] = run["scene"], run.get("image_dir", "")
        out.setdefault(run["method"], []).append(table)
    return {m: pd.concat(parts, ignore_index=True) for m, parts in out.items()}


def plot_nso_scatter(runs: Sequence[dict], out_png: str | Path, title: str = "") -> None:
    """Rows: methods; columns: enclosure, concentration; predicted (y) against true (x) per retrieved pair, and
    where a method's own prediction is not the backbone's patches (vop), theirs on the same pairs beside it."""
    tables = _read_runs(runs)
    fig = Figure(figsize=(6.4, 2.9 * len(tables)))
    axes = fig.subplots(len(tables), 2, squeeze=False)
    for r, (method, t) in enumerate(tables.items()):
        errors = nso_errors(t.enclosure, t.concentration, t.true_enclosure, t.true_concentration)
        heading = f"{method}: RMSE {errors['rmse']:.3f}, Acc {errors['acc']:.0f}% ({errors['pairs']} pairs)"
        # the like-for-like baseline, where it is another prediction than the method's own
        with_patches = t.baseline_enclosure.notna().all() and not (
            t.baseline_enclosure.equals(t.enclosure) and t.baseline_concentration.equals(t.concentration))
        if with_patches:
            base = nso_errors(t.baseline_enclosure, t.baseline_concentration, t.true_enclosure, t.true_concentration)
            heading += f"\npatches, same pairs: RMSE {base['rmse']:.3f}, Acc {base['acc']:.0f}%"
        for c, what in enumerate(("enclosure", "concentration")):
            ax = axes[r, c]
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
            if with_patches:
                ax.scatter(t[f"true_{what}"], t[f"baseline_{what}"], s=5, alpha=0.5, color="tab:orange",
                           label="backbone patches")
            ax.scatter(t[f"true_{what}"], t[what], s=6, alpha=0.6, color="tab:blue", label=f"{method}")
            if with_patches:
                ax.legend(fontsize=6, loc="upper left")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(f"true {what}", fontsize=8)
            ax.set_ylabel(f"predicted {what}", fontsize=8)
            ax.set_title(heading, fontsize=7)
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


def plot_rescaled_pairs(runs: Sequence[dict], out_png: str | Path, num_pairs: int = 4, height_px: int = 160) -> None:
    """The `num_pairs` retrieved pairs of the first method with the largest predicted scale change: each pair
    as retrieved (both images at one display factor) and rescaled (the larger-scale image downsampled by the
    predicted relative scale, `vop.nso.downsampling`), titled with the predicted and the true scale."""
    tables = _read_runs(runs)
    method, t = next(iter(tables.items()))
    t = largest_scale_changes(t, num_pairs)
    fig = Figure(figsize=(8.0, 1.9 * max(1, len(t))))
    axes = fig.subplots(max(1, len(t)), 2, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for r, (_, row) in enumerate(t.iterrows()):
        images = [read_image(Path(row.image_dir) / row[key]) for key in ("query", "db")]
        factors = downsampling(row.relative_scale)
        display = height_px / max(im.shape[0] for im in images)  # one display factor: pixels stay comparable
        for c, scales in enumerate(((1.0, 1.0), (float(factors[0]), float(factors[1])))):
            shown = [_scaled(image, s * display) for image, s in zip(images, scales)]
            canvas = np.full((height_px, sum(im.shape[1] for im in shown) + 8, 3), 255, np.uint8)
            x = 0
            for im in shown:
                canvas[height_px - im.shape[0]:, x:x + im.shape[1]] = im
                x += im.shape[1] + 8
            axes[r, c].imshow(canvas)
        true = f"{row.true_relative_scale:.2f}" if np.isfinite(row.true_relative_scale) else "n/a"
        axes[r, 0].set_title(f"{method}: {Path(row.query).stem} | {Path(row['db']).stem} as retrieved", fontsize=7)
        axes[r, 1].set_title(f"rescaled: predicted s = {row.relative_scale:.2f} (true {true})", fontsize=7)
    fig.tight_layout()
    _save(fig, out_png)


def largest_scale_changes(table: pd.DataFrame, num: int) -> pd.DataFrame:
    """The `num` rows of an overlap table with the largest predicted scale change either way (|log s|), first
    first; rows without a scale are left out."""
    t = table[np.isfinite(table.relative_scale)]
    return t.iloc[np.argsort(-np.abs(np.log(t.relative_scale.to_numpy())), kind="stable")[:num]]


def _scaled(image: np.ndarray, s: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
