"""Figures of the other protocols for the report: R@N curves (VPR), mAP per protocol (revisitop), mAP@K (GL3D).

Each pools a method's scenes like the `ALL` rows of the tables (vop.protocols.tables), methods in the
table's order.

    vop protocol-table vpr --entries entries.json --out vpr.csv --plot vpr.png
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vop.metrics import NO_GROUND_TRUTH
from vop.plots import _save
from vop.protocols import revisitop, tables, vpr


def vpr_curves(entries: Sequence[dict]) -> dict[str, np.ndarray]:
    """{method: recall@N in percent for N = 1 .. 20}, each method's scenes pooled."""
    ranks: dict[str, list[np.ndarray]] = {}
    for entry in entries:
        ranks.setdefault(str(entry["method"]), []).append(tables.vpr_first_ranks(entry))
    ns = np.arange(1, max(vpr.RECALL_NS) + 1)
    return {method: 100.0 * (np.concatenate(parts)[:, None] < ns).mean(axis=0) for method, parts in ranks.items()}


def plot_vpr(entries: Sequence[dict], table: pd.DataFrame, out_png: str | Path, title: str = "") -> None:
    """Recall@N for N = 1 .. 20, one curve per method (its scenes pooled)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    curves = vpr_curves(entries)
    depth = max(vpr.RECALL_NS)
    for method, recall in curves.items():
        ax.plot(np.arange(1, depth + 1), recall, marker=".", label=method)
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.set(xlabel="N (database images retrieved)", ylabel="recall@N (%)", ylim=(0, 102), xlim=(1, depth),
           title=title or "Place recognition: recall@N")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, out_png)


def _bars(ax, methods: list[str], groups: list[str], values: np.ndarray) -> None:
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, values[i], width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 125)  # room for the legend above the 100 % bars
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", fontsize=8, ncol=max(len(methods), 1))


def _all_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["scene"].astype(str) == "ALL"].set_index("method")


def plot_revisitop(table: pd.DataFrame, out_png: str | Path, title: str = "") -> None:
    """mAP and mP@10 under Easy, Medium and Hard, one bar per method."""
    rows = _all_rows(table)
    fig = Figure(figsize=(9.0, 4.0))
    for k, (metric, label) in enumerate((("mAP", "mAP (%)"), (f"mP@{revisitop.KAPPAS[-1]}", "mP@10 (%)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        columns = [f"{metric}_{s}" for s in ("E", "M", "H")]
        values = rows[columns].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
        _bars(ax, list(rows.index), ["Easy", "Medium", "Hard"], values)
        ax.set(ylabel=label, title=f"{title or 'Landmark retrieval'}: {metric}")
    _save(fig, out_png)


def plot_gl3d(table: pd.DataFrame, out_png: str | Path, title: str = "") -> None:
    """mAP@K per method."""
    rows = _all_rows(table)
    column = next(c for c in table.columns if c.startswith("mAP@"))
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    if (rows[column].astype(str) == NO_GROUND_TRUTH).all():
        ax.text(0.5, 0.5, "no ground-truth pairs: nothing to score", ha="center", va="center")
        ax.set_axis_off()
    else:
        values = pd.to_numeric(rows[column], errors="coerce").fillna(0.0).to_numpy()[:, None]
        _bars(ax, list(rows.index), [column], values)
        ax.set(ylabel=f"{column} (%)", title=title or f"Matchable image retrieval: {column}")
    _save(fig, out_png)


def plot_protocol(protocol: str, entries: Sequence[dict], table_csv: str | Path, out_png: str | Path,
                  title: str = "") -> None:
    """The figure of one protocol's table (and, for VPR, its runs' rankings)."""
    table = pd.read_csv(table_csv, dtype={"method": str, "scene": str}, keep_default_na=False)
    if protocol == "vpr":
        plot_vpr(entries, table, out_png, title)
    elif protocol == "revisitop":
        plot_revisitop(table, out_png, title)
    elif protocol == "gl3d":
        plot_gl3d(table, out_png, title)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(tables.TABLES)}")
