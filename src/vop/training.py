"""Training of the VOP encoder (vop.encoder.VOPEncoder) on labelled scenes.

A scene is a pair of files: its features-{backbone}.h5 (vop.features; training scenes also hold
`patch_descriptors_flipped`, the tokens of the horizontally mirrored image) and its labels h5:
root datasets `names` (N,), `pairs` (M,2) int32 indices into names, `bins` (M,) int8 (-1: no
overlap), `offsets` (M+1,) int64 and `positives` (P,2) int16: the positive patch pairs (patch in
image pairs[m,0], patch in image pairs[m,1]) of pair m are positives[offsets[m]:offsets[m+1]];
every other patch pair of that image pair is negative. Patch index = row*16 + col.

The loss acts on the cosine similarity s of the L2-normalised patch embeddings: positives are pulled
to 1 (relu(1-s)^2), negatives pushed to 0 (relu(s)^2), each averaged over its own entries and summed,
since negatives outnumber positives ~256 to 1.

    vop train --scene features.h5 labels.h5 [--scene ...] --backbone dense_sift --out vop.pth
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from vop import io
from vop import labels as labels_cache
from vop.backbones import TOKEN_DIMS
from vop.conf import TrainConf
from vop.encoder import VOPEncoder, save_encoder
from vop.grid import NUM_PATCHES, mirror_patch_indices
from vop.progress import Progress
from vop.utils import resolve_device

logger = logging.getLogger(__name__)

FLIPPED_KEY = "patch_descriptors_flipped"
HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "val_loss",
    "train_pos_sim",
    "train_neg_sim",
    "val_pos_sim",
    "val_neg_sim",
    "seconds",
)


@dataclass
class Labels:
    names: list[str]
    pairs: np.ndarray  # (M,2) int64
    bins: np.ndarray  # (M,) int8
    offsets: np.ndarray  # (M+1,) int64
    positives: np.ndarray  # (P,2) int64


def read_labels(path: str | Path, num_patches: int = NUM_PATCHES) -> Labels:
    """Read and check a labels h5 (the contract in this module's docstring)."""
    path = Path(path)
    fix = "regenerate it with the labels rule (vop.labels)"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found; {fix}")
    try:
        raw = labels_cache.read_labels(path)  # the writer's own reader: one definition of the format
    except KeyError as e:
        raise ValueError(e.args[0]) from e  # the message names the file and the fix
    names = raw["names"]
    pairs = raw["pairs"].astype(np.int64)
    bins = raw["bins"]
    offsets = raw["offsets"].astype(np.int64)
    positives = raw["positives"].astype(np.int64)
    m = len(pairs)
    problems = []
    if pairs.ndim != 2 or pairs.shape[1:] != (2,):
        problems.append(f"pairs has shape {pairs.shape}, expected (M,2)")
    elif m and (pairs.min() < 0 or pairs.max() >= len(names)):
        problems.append(f"pairs index outside names (N={len(names)})")
    if bins.shape != (m,):
        problems.append(f"bins has shape {bins.shape}, expected ({m},)")
    if offsets.shape != (m + 1,):
        problems.append(f"offsets has shape {offsets.shape}, expected ({m + 1},)")
    elif offsets[0] != 0 or offsets[-1] != len(positives) or np.any(np.diff(offsets) < 0):
        problems.append(f"offsets must rise from 0 to len(positives)={len(positives)}")
    if positives.ndim != 2 or positives.shape[1:] != (2,):
        problems.append(f"positives has shape {positives.shape}, expected (P,2)")
    elif len(positives) and (positives.min() < 0 or positives.max() >= num_patches):
        problems.append(f"positive patch indices outside [0, {num_patches})")
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}; {fix}")
    return Labels(names, pairs, bins, offsets, positives)


@dataclass
class TrainingData:
    """All scenes in memory: tokens per image, and per pair its images and flat positive indices."""

    tokens: torch.Tensor  # (I,P,C) float16
    tokens_flipped: torch.Tensor | None  # (I,P,C) float16; rows of scenes without flips are unused
    keypoints: torch.Tensor  # (I,P,2) float32
    pairs: np.ndarray  # (K,2) rows of tokens
    offsets: np.ndarray  # (K+1,) into positives
    positives: np.ndarray  # (S,) a*P+b
    positives_mirrored: np.ndarray  # (S,) the same pairs in the mirrored images
    can_flip: np.ndarray  # (K,) bool
    overlapping: np.ndarray  # (K,) bool, bins >= 0

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def num_patches(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device) -> TrainingData:
        flipped = None if self.tokens_flipped is None else self.tokens_flipped.to(device)
        return dataclasses.replace(
            self, tokens=self.tokens.to(device), tokens_flipped=flipped, keypoints=self.keypoints.to(device)
        )


def load_training_data(
    scenes: Sequence[tuple[str | Path, str | Path]], backbone: str | None = None, flip: bool = True
) -> TrainingData:
    """Read the tokens of the labelled images of every scene once (they are small) and index the pairs."""
    if not scenes:
        raise ValueError("no training scenes: pass at least one (features_h5, labels_h5) pair")
    tokens, flipped, keypoints = [], [], []
    pairs, counts, positives, can_flip, overlapping = [], [], [], [], []
    dim = None
    first_image = 0
    any_flip = False
    for scene in scenes:
        if len(scene) != 2:
            raise ValueError(f"a scene is a pair (features_h5, labels_h5), got {scene!r}")
        features_h5, labels_h5 = Path(scene[0]), Path(scene[1])
        labels = read_labels(labels_h5)
        used = np.unique(labels.pairs) if len(labels.pairs) else np.zeros(0, np.int64)
        names = [labels.names[i] for i in used]
        if not names:
            logger.warning("%s: no labelled pairs, the scene is skipped", labels_h5)
            continue
        scene_tokens = io.read_stacked(features_h5, names, "patch_descriptors", np.float16)
        if scene_tokens.ndim != 3 or scene_tokens.shape[1] != NUM_PATCHES:
            raise ValueError(
                f"{features_h5}: patch_descriptors of shape {scene_tokens.shape[1:]}, expected "
                f"({NUM_PATCHES}, C); rerun the features rule"
            )
        if dim is None:
            dim = scene_tokens.shape[2]
            if backbone in TOKEN_DIMS and TOKEN_DIMS[backbone] != dim:
                raise ValueError(
                    f"{features_h5}: {dim}-d tokens but backbone {backbone} gives {TOKEN_DIMS[backbone]}-d; "
                    f"pass the features-{backbone}.h5 of each scene"
                )
        elif scene_tokens.shape[2] != dim:
            raise ValueError(
                f"{features_h5}: {scene_tokens.shape[2]}-d tokens but the first scene has {dim}-d; "
                "train on the features of one backbone"
            )
        with h5py.File(features_h5, "r") as f:
            has_flip = flip and all(FLIPPED_KEY in f[name] for name in names)
        if flip and not has_flip:
            logger.info("%s: no %s, horizontal flipping is disabled for this scene", features_h5, FLIPPED_KEY)
        tokens.append(scene_tokens)
        keypoints.append(io.read_stacked(features_h5, names, "keypoints", np.float32))
        flipped.append(io.read_stacked(features_h5, names, FLIPPED_KEY, np.float16) if has_flip else None)
        any_flip |= has_flip
        # labels' image indices -> rows of the stacked tokens of all scenes
        row = np.full(len(labels.names), -1, np.int64)
        row[used] = first_image + np.arange(len(used))
        pairs.append(row[labels.pairs])
        counts.append(np.diff(labels.offsets))
        positives.append(labels.positives)
        can_flip.append(np.full(len(labels.pairs), has_flip))
        overlapping.append(labels.bins >= 0)
        first_image += len(names)
        logger.info(
            "%s: %d images, %d pairs (%d overlapping), %d positive patch pairs",
            labels_h5,
            len(names),
            len(labels.pairs),
            int((labels.bins >= 0).sum()),
            len(labels.positives),
        )
    if not tokens:
        raise ValueError(f"no labelled pairs in any of the {len(scenes)} scene(s); check the labels files")
    all_tokens = np.concatenate(tokens)
    if any_flip:
        # Scenes without flipped tokens never flip, so their rows are filled with the unflipped ones.
        all_flipped = np.concatenate([f if f is not None else t for f, t in zip(flipped, tokens)])
    positives_ab = np.concatenate(positives)
    num_patches = all_tokens.shape[1]
    return TrainingData(
        tokens=torch.from_numpy(all_tokens),
        tokens_flipped=torch.from_numpy(all_flipped) if any_flip else None,
        keypoints=torch.from_numpy(np.concatenate(keypoints)),
        pairs=np.concatenate(pairs),
        offsets=np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64),
        positives=positives_ab[:, 0] * num_patches + positives_ab[:, 1],
        positives_mirrored=mirror_patch_indices(positives_ab[:, 0]) * num_patches
        + mirror_patch_indices(positives_ab[:, 1]),
        can_flip=np.concatenate(can_flip),
        overlapping=np.concatenate(overlapping),
    )


def make_batch(data: TrainingData, index: np.ndarray, flip: np.ndarray | None = None):
    """Tokens and keypoints of both images of the pairs `index`, and their dense (B,P,P) label masks.

    A flipped pair uses both images' mirrored tokens and the mirrored positive indices; the
    keypoints stay the same grid, since the mirrored tokens are stored in the mirrored grid order.
    """
    index = np.asarray(index, np.int64)
    flip = np.zeros(len(index), bool) if flip is None else np.asarray(flip, bool)
    if flip.any() and (data.tokens_flipped is None or not data.can_flip[index[flip]].all()):
        raise ValueError("flip requested for a pair whose scene has no flipped tokens")
    device = data.tokens.device
    p = data.num_patches
    a = torch.from_numpy(data.pairs[index, 0]).to(device)
    b = torch.from_numpy(data.pairs[index, 1]).to(device)
    tokens_a, tokens_b = data.tokens[a], data.tokens[b]
    if flip.any():
        rows = torch.from_numpy(np.flatnonzero(flip)).to(device)
        tokens_a[rows] = data.tokens_flipped[a[rows]]
        tokens_b[rows] = data.tokens_flipped[b[rows]]
    starts, ends = data.offsets[index], data.offsets[index + 1]
    flat = [(data.positives_mirrored if f else data.positives)[s:e] for s, e, f in zip(starts, ends, flip)]
    batch_rows = np.repeat(np.arange(len(index)), ends - starts)
    mask = torch.zeros(len(index), p * p, dtype=torch.bool)
    mask[torch.from_numpy(batch_rows), torch.from_numpy(np.concatenate(flat) if flat else np.zeros(0, np.int64))] = True
    return (
        tokens_a.float(),
        data.keypoints[a],
        tokens_b.float(),
        data.keypoints[b],
        mask.view(len(index), p, p).to(device),
    )


def patch_loss(embed_a: torch.Tensor, embed_b: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Balanced loss on the cosine similarities of all patch pairs; also the sums behind the epoch means."""
    a = torch.nn.functional.normalize(embed_a, dim=-1)
    b = torch.nn.functional.normalize(embed_b, dim=-1)
    sim = a @ b.transpose(1, 2)  # (B,P,P)
    pos = mask.to(sim.dtype)
    neg = 1.0 - pos
    n_pos, n_neg = pos.sum(), neg.sum()
    pos_loss = (torch.relu(1.0 - sim).square() * pos).sum()
    neg_loss = (torch.relu(sim).square() * neg).sum()
    loss = pos_loss / n_pos.clamp(min=1.0) + neg_loss / n_neg.clamp(min=1.0)
    sums = {
        "pos_loss": pos_loss.detach(),
        "neg_loss": neg_loss.detach(),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "pos_sim": (sim.detach() * pos).sum(),
        "neg_sim": (sim.detach() * neg).sum(),
    }
    return loss, sums


def _epoch_means(total: dict) -> tuple[float, float, float]:
    """(loss, mean positive similarity, mean negative similarity) over a whole split."""
    if not total:
        return float("nan"), float("nan"), float("nan")
    t = {k: float(v) for k, v in total.items()}
    n_pos, n_neg = max(t["n_pos"], 1.0), max(t["n_neg"], 1.0)
    pos_sim = t["pos_sim"] / t["n_pos"] if t["n_pos"] else float("nan")
    return t["pos_loss"] / n_pos + t["neg_loss"] / n_neg, pos_sim, t["neg_sim"] / n_neg


def _accumulate(total: dict, sums: dict) -> None:
    for k, v in sums.items():
        total[k] = total.get(k, 0.0) + v.detach()


def _run_epoch(model, data, index, batch_size, optimizer=None, flips=None, bar: Progress | None = None) -> dict:
    total: dict = {}
    for start in range(0, len(index), batch_size):
        batch = index[start : start + batch_size]
        flip = None if flips is None else flips[start : start + batch_size]
        tokens_a, kp_a, tokens_b, kp_b, mask = make_batch(data, batch, flip)
        # Both images in one forward pass: one dropout draw, and half the calls.
        embed = model(torch.cat([tokens_a, tokens_b]), torch.cat([kp_a, kp_b]))
        loss, sums = patch_loss(embed[: len(batch)], embed[len(batch) :], mask)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _accumulate(total, sums)
        if bar is not None:
            bar.update()
    return total


def plot_history(history: Sequence[dict], path: str | Path, best_epoch: int | None = None) -> None:
    """Loss and mean positive / negative similarity per epoch, as a png (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, sim_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="balanced hinge loss")
    sim_ax.plot(epochs, [h["val_pos_sim"] for h in history], "o-", color="tab:green", label="positive (val)")
    sim_ax.plot(epochs, [h["val_neg_sim"] for h in history], "o-", color="tab:red", label="negative (val)")
    sim_ax.plot(epochs, [h["train_pos_sim"] for h in history], "--", color="tab:green", label="positive (train)")
    sim_ax.plot(epochs, [h["train_neg_sim"] for h in history], "--", color="tab:red", label="negative (train)")
    sim_ax.set(xlabel="epoch", ylabel="mean cosine similarity", title="patch similarity")
    for ax in (loss_ax, sim_ax):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label="kept checkpoint")
        ax.grid(alpha=0.3)
        ax.legend()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def train_encoder(
    scenes: Sequence[tuple[str | Path, str | Path]],
    out_checkpoint: str | Path,
    backbone: str,
    conf: TrainConf = TrainConf(),
    device: str | torch.device | None = None,
    log_csv: str | Path | None = None,
    plot_png: str | Path | None = None,
) -> dict:
    """Train a VOPEncoder on `scenes` [(features_h5, labels_h5), ...]; keep the best validation epoch.

    Writes `out_checkpoint` ({"model", "config", "backbone", "history", "best_epoch"}; loads with
    torch.load(weights_only=True) and vop.encoder.load_encoder) and optionally the per-epoch csv and
    plot. Returns {"history": [per-epoch dicts], "best_epoch", "best_loss", "seconds"}.
    """
    epochs, batch_size, val_fraction, flip, seed = conf.epochs, conf.batch_size, conf.val_fraction, conf.flip, conf.seed
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    start_time = time.perf_counter()
    device = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_training_data(scenes, backbone, flip).to(device)

    # Validation split by pairs: at least one of each when there are two pairs or more.
    k = data.num_pairs
    n_val = round(val_fraction * k)
    if val_fraction > 0 and k >= 2:
        n_val = min(max(n_val, 1), k - 1)
    order = rng.permutation(k)
    val_index, train_index = np.sort(order[:n_val]), order[n_val:]
    flipping = flip and bool(data.can_flip[train_index].any())
    logger.info(
        "training on %d pairs, validating on %d, %d-d tokens of %s -> %d-d, on %s, flip %s",
        len(train_index),
        len(val_index),
        data.tokens.shape[2],
        backbone,
        conf.out_dim,
        device,
        "on" if flipping else "off",
    )
    if not len(val_index):
        logger.warning(
            "no validation pairs (val_fraction=%s): keeping the epoch of the lowest train loss", val_fraction
        )

    model = VOPEncoder(data.tokens.shape[2], conf.out_dim, dropout=conf.dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
    history: list[dict] = []
    best = {"loss": float("inf"), "epoch": None, "state": None}
    batches = -(-len(train_index) // batch_size) + -(-len(val_index) // batch_size)
    bar = Progress(epochs * batches, "training", "batches", logger=logger)  # every epoch's, validation included
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        index = rng.permutation(train_index)
        flips = (rng.random(len(index)) < 0.5) & data.can_flip[index] if flipping else None
        train_loss, train_pos, train_neg = _epoch_means(_run_epoch(model, data, index, batch_size, optimizer, flips,
                                                                   bar))
        model.eval()
        with torch.no_grad():
            val_loss, val_pos, val_neg = _epoch_means(_run_epoch(model, data, val_index, batch_size, bar=bar))
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_pos_sim": train_pos,
            "train_neg_sim": train_neg,
            "val_pos_sim": val_pos,
            "val_neg_sim": val_neg,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(row)
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"epoch {epoch}: the training loss is {train_loss}; lower train.lr")
        score = val_loss if len(val_index) else train_loss
        if score < best["loss"]:
            best = {
                "loss": score,
                "epoch": epoch,
                "state": {key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
            }
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val similarity pos %.3f / neg %.3f (%.1f s)%s",
            epoch,
            epochs,
            train_loss,
            val_loss,
            val_pos,
            val_neg,
            row["seconds"],
            " *" if best["epoch"] == epoch else "",
        )
        if log_csv is not None:  # rewritten every epoch, so a running job can be followed
            io.write_csv(log_csv, HISTORY_KEYS, [[h[key] for key in HISTORY_KEYS] for h in history])

    bar.close()
    if best["state"] is None:
        raise FloatingPointError(f"no epoch had a finite validation loss ({history[-1]}); lower train.lr")
    save_encoder(model, out_checkpoint, backbone, history, state=best["state"], best_epoch=best["epoch"])
    if plot_png is not None:
        plot_history(history, plot_png, best["epoch"])
    seconds = time.perf_counter() - start_time
    logger.info(
        "kept epoch %d (loss %.4f) in %s; %d epochs in %.1f s",
        best["epoch"],
        best["loss"],
        out_checkpoint,
        epochs,
        seconds,
    )
    return {"history": history, "best_epoch": best["epoch"], "best_loss": best["loss"], "seconds": seconds}
