"""Figures of a dataset's results: pose-error curves, recall@k curves and a grid of retrievals.

Each figure pools a method's scenes like the `ALL` rows of auc.csv. The retrieval grid shows, for a few
queries, the top-k database images of every method with the ground-truth overlap printed on each, so a
reader sees what a method retrieves, not only how it scores.

    vop plots --entries entries.json --out-dir results/demo/plots
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import (
    Figure,  # no pyplot: no GUI backend, no global figure state in jobs
)

from vop.images import read_image
from vop.io import atomic_path, read_gt, read_pairs
from vop.metrics import (
    TAU,
    best_pair_errors,
    read_pose_csv,
    retrieval_recall_at_ks,
    retrieved_per_query,
    run_database,
)

logger = logging.getLogger(__name__)

MAX_ERROR_DEG = 30.0


def _by_method(entries: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in entries:
        out.setdefault(str(entry["method"]), []).append(entry)
    return out


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")


def cumulative_errors(errors: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Fraction of errors <= each grid value (failures, inf or nan, never count)."""
    errors = np.sort(np.where(np.isnan(errors), np.inf, errors))
    if errors.size == 0:
        return np.zeros_like(grid, np.float64)
    return np.searchsorted(errors, grid, side="right") / errors.size


def plot_pose_error_curves(entries: Sequence[dict], out_png: str | Path, title: str = "") -> None:
    """Cumulative pose error (max of rotation and translation error, best pair per query) per method."""
    grid = np.linspace(0.0, MAX_ERROR_DEG, 301)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, runs in _by_method(entries).items():
        errors = np.concatenate([best_pair_errors(read_pose_csv(e["pose_csv"]))["error"].to_numpy(np.float64)
                                 for e in runs])
        ax.plot(grid, 100 * cumulative_errors(errors, grid), label=f"{method} ({len(errors)} queries)")
    for t in (5, 10, 20):
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax.set(xlabel="pose error (degrees)", ylabel="queries with error below (%)", xlim=(0, MAX_ERROR_DEG),
           ylim=(0, 100), title=title or "Cumulative pose error")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out_png)


def plot_recall_curves(entries: Sequence[dict], out_png: str | Path, tau: float = TAU, title: str = "") -> None:
    """Retrieval recall@k for k = 1 .. the method's k, pooled over the scenes' queries."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, runs in _by_method(entries).items():
        ks = np.arange(1, max(int(e["k"]) for e in runs) + 1)
        per_query = []
        for e in runs:
            gt = read_gt(e["gt_h5"])
            if gt.overlap is not None:
                per_query.append(retrieval_recall_at_ks(read_pairs(e["pairs_txt"]), gt, ks, tau, e["gt_h5"],
                                                        run_database(e, gt)))
        if per_query:
            ax.plot(ks, 100 * np.concatenate(per_query).mean(axis=0), marker="o", label=method)
    ax.set(xlabel="k (retrieved images)", ylabel=f"recall@k (%), overlap >= {tau:g}", ylim=(0, 100),
           title=title or "Retrieval recall")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, out_png)


def _thumbnail(path: Path, size: int) -> np.ndarray:
    image = read_image(path)  # RGB, the stored grid (vop.images)
    h, w = image.shape[:2]
    s = size / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def plot_retrieval_grid(entries: Sequence[dict], out_png: str | Path, num_queries: int = 3,
                        thumb_px: int = 160, tau: float = TAU) -> None:
    """Rows: (query, method) for the first `num_queries` queries of the first scene; columns: the query,
    then its top-k retrieved images, each titled with its ground-truth overlap with the query (green when
    >= tau, i.e. relevant)."""
    methods = _by_method(entries)
    scene = min(e["scene"] for e in entries)
    runs = {m: next(e for e in es if e["scene"] == scene) for m, es in methods.items() if any(
        e["scene"] == scene for e in es)}
    first = next(iter(runs.values()))
    gt = read_gt(first["gt_h5"])
    index = gt.index()
    retrieved = {m: retrieved_per_query(read_pairs(e["pairs_txt"])) for m, e in runs.items()}
    queries = list(retrieved[next(iter(runs))])[:num_queries]
    k = max(int(e["k"]) for e in runs.values())
    rows = [(q, m) for q in queries for m in runs]
    fig = Figure(figsize=(1.6 * (k + 1), 1.45 * len(rows)))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, (query, method) in enumerate(rows):
        image_dir = Path(runs[method]["image_dir"])
        cells = [(query, None)] + [(db, gt.overlap[index[query], index[db]] if gt.overlap is not None else None)
                                   for db in retrieved[method].get(query, [])[:k]]
        for c in range(k + 1):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(cells):
                continue
            name, overlap = cells[c]
            ax.imshow(_thumbnail(image_dir / name, thumb_px))
            if c == 0:
                ax.set_title(f"query {Path(name).stem}", fontsize=7)
                ax.set_ylabel(method, fontsize=8)
            elif overlap is not None:
                ax.set_title(f"overlap {overlap:.2f}", fontsize=7, color="green" if overlap >= tau else "red")
    fig.suptitle(f"Top-{k} retrievals per method, scene {scene}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the title
    _save(fig, out_png)


FIGURE_TITLES = {"pose_errors": "Cumulative pose error (best pair per query)",
                 "recall": "Retrieval recall@k", "retrievals": "Top-k retrievals with their ground-truth overlap"}


def write_summary_html(auc_csv: str | Path, figures: Sequence[str | Path], out_html: str | Path,
                       title: str = "") -> None:
    """One self-contained HTML fragment: the auc.csv table and the figures as embedded PNGs. The report's
    front page includes it, so the table and plots are visible there without clicking through."""
    table = pd.read_csv(auc_csv, dtype={"method": str, "scene": str}, keep_default_na=False)
    parts = [f"<h2>{html.escape(title or str(auc_csv))}</h2>",
             table.to_html(index=False, float_format=lambda v: f"{v:.1f}", classes="vop-auc", border=1,
                           na_rep=""),
             ]
    for figure in map(Path, figures):
        data = base64.b64encode(figure.read_bytes()).decode()
        caption = html.escape(FIGURE_TITLES.get(figure.stem, figure.stem))
        parts.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{data}" style="max-width:100%">'
                     f"<figcaption>{caption}</figcaption></figure>")
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text("\n".join(parts) + "\n")


def make_plots(entries: Sequence[dict], pose_png: str | Path, recall_png: str | Path, grid_png: str | Path,
               tau: float = TAU, auc_csv: str | Path | None = None, summary_html: str | Path | None = None,
               title: str = "") -> None:
    """The three figures of a dataset, and with auc_csv and summary_html the HTML summary of table and
    figures. entries: {method, scene, pose_csv, pairs_txt, gt_h5, k, image_dir}."""
    plot_pose_error_curves(entries, pose_png)
    plot_recall_curves(entries, recall_png, tau)
    plot_retrieval_grid(entries, grid_png, tau=tau)
    if summary_html is not None:
        if auc_csv is None:
            raise ValueError("make_plots: summary_html needs auc_csv, the table it shows")
        write_summary_html(auc_csv, [pose_png, recall_png, grid_png], summary_html, title)
    logger.info("Wrote %s, %s and %s", pose_png, recall_png, grid_png)
