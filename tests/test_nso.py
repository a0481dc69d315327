"""Normalized surface overlap both ways round (vop.nso): ground truth from depth and from tracks, the
relative scale, the box-embeddings protocol."""

import numpy as np
import pytest

from vop import nso
from vop.conf import NsoConf
from vop.datasets import open_scene, synthetic
from vop.ground_truth import write_scene_ground_truth
from vop.io import read_gt

W, H, D = 320, 240, 4.0  # image size, distance of the plane z = D


def K_matrix(f, w=W, h=H):
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def plane(w=W, h=H):
    return np.full((h, w), D, np.float32)


def test_zoom_pair_close_up_is_enclosed_by_the_wide_view():
    # Same camera centre, focal length doubled: the close-up sees the wide view's central quarter.
    K = np.stack([K_matrix(200.0), K_matrix(400.0)])  # 0: wide, 1: close-up
    T = np.stack([np.eye(4), np.eye(4)])
    got = nso.depth_nso([plane(), plane()], K, T, stride=1)
    assert got[1, 0] == pytest.approx(1.0, abs=1e-6)  # all of the close-up is inside the wide view
    assert got[0, 1] == pytest.approx(0.25, abs=0.01)  # a quarter of the wide view is in the close-up
    assert np.diag(got).tolist() == [1.0, 1.0]
    # the relative scale of (close-up, wide): the close-up shows the shared surface twice as large
    assert nso.relative_scale(got[1, 0], got[0, 1], W * H, W * H) == pytest.approx(2.0, abs=0.02)


def test_depth_nso_drops_occluded_pixels_and_respects_pairs():
    K = np.stack([K_matrix(200.0)] * 2)
    T = np.stack([np.eye(4)] * 2)
    occluded = plane()
    occluded[:, : W // 2] = D / 2  # something in front of the left half in the second image
    got = nso.depth_nso([plane(), occluded], K, T, stride=2)
    assert got[0, 1] == pytest.approx(0.5, abs=0.01)
    assert got[1, 0] == pytest.approx(0.5, abs=0.01)  # the occluder's pixels land on the plane's wrong depth
    only = nso.depth_nso([plane(), occluded], K, T, stride=2, pairs=np.array([[0, 1], [0, 0]], bool))
    assert only[0, 1] == pytest.approx(got[0, 1]) and only[1, 0] == 0.0


def test_tracks_nso_counts_shared_points_over_the_image_points():
    got = nso.tracks_nso([np.array([1, 2, 3, 4]), np.array([3, 4]), np.array([9]), np.array([], np.int64)])
    assert got[0, 1] == pytest.approx(0.5) and got[1, 0] == pytest.approx(1.0)
    assert got[0, 2] == 0.0 and got[3, 0] == 0.0 and got[3, 3] == 1.0


def test_relative_scale_hand_cases_and_downsampling_only():
    s = nso.relative_scale([1.0, 0.25, 0.5, 0.0, 1.0], [0.25, 1.0, 0.5, 0.3, 1.0],
                           [100, 100, 400, 100, 100], [100, 100, 100, 100, 400])
    assert s[:3].tolist() == pytest.approx([2.0, 0.5, 2.0])
    assert np.isnan(s[3])  # nothing shared: no scale
    assert s[4] == pytest.approx(0.5)  # same shares, the database image has 4x the pixels
    q, d = nso.downsampling(s)
    assert q.tolist()[:3] == pytest.approx([0.5, 1.0, 0.5]) and d.tolist()[:3] == pytest.approx([1.0, 0.5, 1.0])
    assert (q[3], d[3]) == (1.0, 1.0)
    assert np.all(q <= 1) and np.all(d <= 1)


def test_nso_errors_follow_the_box_embeddings_protocol():
    got = nso.nso_errors([0.5, 1.0, np.nan], [0.5, 0.0, 0.2], [0.5, 0.8, 0.3], [0.3, 0.0, 0.1])
    # e1 = (0, 0.2), e2 = (0.2, 0): the NaN prediction is left out
    assert got["pairs"] == 2
    assert got["rmse"] == pytest.approx(np.sqrt((0.04 + 0.04) / 2))
    assert got["l1"] == pytest.approx(0.2)
    assert got["acc"] == pytest.approx(50.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("nso")
    synthetic.generate_scene(root / "scene", seed=0, num_images=6, width=160, height=120)
    return open_scene("synthetic", root, "scene"), root


def test_ground_truth_stores_nso_from_depth_beside_the_overlap(scene):
    reader, root = scene
    gt = write_scene_ground_truth(reader, root / "gt.h5", nso=NsoConf(stride=2))
    back = read_gt(root / "gt.h5")
    assert back.nso_source == "depth" and back.nso.dtype == np.float32 and back.nso.shape == (6, 6)
    np.testing.assert_array_equal(back.nso, gt.nso)
    assert np.all(np.diag(back.nso) == 1.0)
    assert np.all((back.nso >= 0) & (back.nso <= 1))
    # no shared 3D point, no shared surface; shared points, some shared surface
    covisible = np.maximum(back.overlap, back.overlap.T) > 0
    assert np.all(back.nso[~covisible] == 0)
    off = covisible & ~np.eye(6, dtype=bool)
    assert (back.nso[off] > 0).mean() > 0.8
    # the same warp as the patch labels: NSO * valid pixels = the labels' count matrix summed
    from vop.labels import lift_pixels, patch_correspondences

    i, j = np.argwhere(off)[0]
    depth_i, depth_j = reader.depth(gt.names[i], gt.image_size[i]), reader.depth(gt.names[j], gt.image_size[j])
    counts = patch_correspondences(depth_i, gt.K[i], gt.T_w2cam[i], depth_j, gt.K[j], gt.T_w2cam[j], stride=2)
    assert counts.sum() / lift_pixels(depth_i, gt.K[i], 2)[0].size == pytest.approx(back.nso[i, j], abs=1e-6)


def test_ground_truth_without_nso_stays_valid(scene):
    reader, root = scene
    write_scene_ground_truth(reader, root / "none.h5", nso=NsoConf(geometry="none"))
    back = read_gt(root / "none.h5")
    assert back.nso is None and back.nso_source is None and back.overlap is not None
    with pytest.raises(ValueError, match="nso.geometry"):
        nso.ground_truth_nso(back, None, "depth")


# ---------------------------------------------------------------------------------------------------
# Predicted NSO from the votes


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def brute_force_coverage(patches, cand, tau):
    """Straightforward: per (query, candidate), which patches on each side have a partner above tau."""
    enc = np.zeros(cand.shape)
    con = np.zeros(cand.shape)
    for q in range(cand.shape[0]):
        for s, c in enumerate(cand[q]):
            sim = patches[q] @ patches[c].T
            enc[q, s] = (sim > tau).any(1).mean()
            con[q, s] = (sim > tau).any(0).mean()
    return enc, con


def test_predicted_nso_of_identical_images_is_one_both_ways():
    from vop.voting import PatchStore, vote_scores

    rng = np.random.default_rng(0)
    image = unit(rng.normal(size=(1, 256, 32)))
    patches = np.concatenate([image, image, unit(rng.normal(size=(1, 256, 32)))])
    s = PatchStore.from_array(patches)
    _, enc, con = vote_scores(s, s, np.array([[1, 2], [0, 2], [0, 1]]), 0.8, True, shared=True, coverage=True)
    assert enc[0, 0] == 1.0 and con[0, 0] == 1.0 and enc[1, 0] == 1.0 and con[1, 0] == 1.0
    assert enc[0, 1] < 0.05 and con[0, 1] < 0.05  # random patches: hardly any cosine above 0.8


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("chunk_size, blocks_per_batch", [(64, 16), (3, 2)])
def test_predicted_nso_equals_brute_force_and_leaves_votes_unchanged(shared, chunk_size, blocks_per_batch):
    from vop import prefilter
    from vop.voting import PatchStore, vote_scores

    rng = np.random.default_rng(1)
    n, m, d = 10, 12, 6
    patches = unit(rng.normal(size=(n, m, d)))
    patches[3, :6] = patches[5, 2:8]  # half of image 3 inside image 5
    cand, _ = prefilter.prefilter(patches.mean(1), patches.mean(1), 4, exclude=np.arange(n))
    s = PatchStore.from_array(patches, chunk_size=chunk_size)
    tau = 0.6
    votes, enc, con = vote_scores(s, s, cand, tau, True, shared=shared, blocks_per_batch=blocks_per_batch,
                                  coverage=True)
    want_enc, want_con = brute_force_coverage(patches, cand, tau)
    np.testing.assert_allclose(enc, want_enc)
    np.testing.assert_allclose(con, want_con)
    np.testing.assert_array_equal(votes, vote_scores(s, s, cand, tau, True, shared=shared,
                                                     blocks_per_batch=blocks_per_batch))
    assert 0 < want_enc.mean() < 1 and not np.allclose(want_enc, want_con)  # asymmetric, not trivial
    # a query shard gives its rows of the whole scene's (issue 17's sharded retrieval)
    rows = np.arange(4, 8)
    if shared:
        _, enc_shard, con_shard = vote_scores(s, s, cand[rows], tau, True, shared=True, query_ids=rows, coverage=True)
    else:
        _, enc_shard, con_shard = vote_scores(PatchStore.from_array(patches[rows]), s, cand[rows], tau, True,
                                              coverage=True)
    np.testing.assert_allclose(enc_shard, want_enc[rows])
    np.testing.assert_allclose(con_shard, want_con[rows])


# ---------------------------------------------------------------------------------------------------
# The workflow: overlap.csv per method, nso.csv per dataset


def test_workflow_writes_overlap_and_the_nso_table(tiny_run):
    import h5py
    import pandas as pd
    from test_workflow import snakemake as run_snakemake

    from vop.io import read_pairs

    run_snakemake(tiny_run, "results/tiny/nso.csv", "results/tiny/plots/nso.png", "results/tiny/plots/nso_pairs.png")
    table = pd.read_csv(tiny_run / "results/tiny/nso.csv")
    from vop.images import read_image

    scatter = read_image(tiny_run / "results/tiny/plots/nso.png")
    assert scatter.shape[0] > scatter.shape[1]  # one row of (enclosure, concentration) per method: three
    assert sorted(table.method.unique()) == ["cls", "vop", "vop_identity"]
    for scene in ("room_a", "room_b"):
        gt = read_gt(tiny_run / f"results/tiny/{scene}/gt.h5")
        assert gt.nso_source == "depth"
        index = gt.index()
        for method in ("vop", "cls"):
            run_dir = tiny_run / f"results/tiny/{scene}/{method}"
            overlap = pd.read_csv(run_dir / "overlap.csv")
            assert list(zip(overlap["query"], overlap["db"])) == read_pairs(run_dir / "pairs.txt")
            q = overlap["query"].map(index).to_numpy()
            d = overlap["db"].map(index).to_numpy()
            np.testing.assert_allclose(overlap.true_enclosure, gt.nso[q, d], atol=1e-5)
            np.testing.assert_allclose(overlap.true_concentration, gt.nso[d, q], atol=1e-5)
            assert overlap[["enclosure", "concentration"]].stack().between(0, 1).all()
            area = gt.image_size.prod(1)
            known = overlap.concentration > 0
            np.testing.assert_allclose(overlap.relative_scale[known], np.sqrt(
                overlap.enclosure / overlap.concentration * area[q] / area[d])[known], rtol=1e-4)
            # the table's rows are the protocol over these pairs: the method's own prediction and, for vop,
            # the backbone's patches on the same pairs
            rows = table[(table.method == method) & (table.scene == scene)].set_index("predictor")
            assert sorted(rows.index) == (["patches", "votes"] if method == "vop" else ["patches"])
            if method == "cls":  # its own prediction is the baseline
                np.testing.assert_array_equal(overlap[["enclosure", "concentration"]],
                                              overlap[["baseline_enclosure", "baseline_concentration"]])
            for predictor in rows.index:
                enc, con = nso.PREDICTOR_COLUMNS[predictor]
                want = nso.nso_errors(overlap[enc], overlap[con], overlap.true_enclosure, overlap.true_concentration)
                row = rows.loc[predictor]
                assert row.pairs == want["pairs"] == len(overlap)
                assert row.rmse == pytest.approx(want["rmse"], abs=1e-4)
                assert row.acc == pytest.approx(want["acc"], abs=1e-3)
        # the baseline thresholds the raw backbone patches by vop's rule (the chance of a partner): cls's
        # prediction, and the baseline columns of vop's pairs
        from vop.conf import ClsConf
        from vop.voting import PatchStore, auto_radius, chance_threshold

        features = tiny_run / f"results/tiny/{scene}/features-dense_sift.h5"
        store = PatchStore.from_h5(features, gt.names)
        tau = max(1 - auto_radius(store)[0], chance_threshold(store, ClsConf.nso_chance))
        for method, columns in (("cls", ("enclosure", "concentration")),
                                ("vop", ("baseline_enclosure", "baseline_concentration"))):
            pair = pd.read_csv(tiny_run / f"results/tiny/{scene}/{method}/overlap.csv").iloc[-1]
            with h5py.File(features) as f:
                a, b = (unit(f[name]["patch_descriptors"][()].astype(np.float32)) for name in (pair["query"],
                                                                                               pair["db"]))
            sim = a @ b.T > tau
            assert pair[columns[0]] == pytest.approx(sim.any(1).mean(), abs=1e-6)
            assert pair[columns[1]] == pytest.approx(sim.any(0).mean(), abs=1e-6)
    pooled = table[table.scene == "ALL"].set_index(["method", "predictor"])
    per_scene = table[table.scene != "ALL"].groupby(["method", "predictor"]).pairs.sum()
    assert (pooled.pairs == per_scene[pooled.index]).all()


def test_coverage_threshold_above_the_voting_one_equals_brute_force():
    from vop.voting import PatchStore, vote_scores

    rng = np.random.default_rng(2)
    patches = unit(rng.normal(size=(6, 12, 4)))
    cand = np.array([[(q + 1) % 6, (q + 2) % 6] for q in range(6)])
    s = PatchStore.from_array(patches, chunk_size=4)
    votes, enc, con = vote_scores(s, s, cand, 0.3, True, shared=True, coverage=True, coverage_tau=0.8)
    want_enc, want_con = brute_force_coverage(patches, cand, 0.8)
    np.testing.assert_allclose(enc, want_enc)
    np.testing.assert_allclose(con, want_con)
    np.testing.assert_array_equal(votes, vote_scores(s, s, cand, 0.3, True, shared=True))
    # below the voting threshold it is the voting threshold (what was thresholded away is gone)
    _, low, _ = vote_scores(s, s, cand, 0.3, True, shared=True, coverage=True, coverage_tau=0.1)
    np.testing.assert_allclose(low, brute_force_coverage(patches, cand, 0.3)[0])


def test_chance_threshold_gives_the_chance_of_a_partner_in_unrelated_images():
    from vop.voting import PatchStore, chance_threshold

    rng = np.random.default_rng(3)
    patches = unit(rng.normal(size=(60, 64, 8)))  # unrelated images: random patches
    tau = chance_threshold(PatchStore.from_array(patches), 0.3)
    # the share of patches of one image with some partner above tau in another
    found = np.mean([(patches[i] @ patches[i + 1].T > tau).any(1).mean() for i in range(0, 59, 2)])
    assert found == pytest.approx(0.3, abs=0.05)
    with pytest.raises(ValueError, match="nso_chance"):
        chance_threshold(PatchStore.from_array(patches), 1.0)


def test_rescaled_pairs_are_those_with_the_largest_scale_change_either_way():
    import pandas as pd

    from vop.nso_plots import largest_scale_changes

    table = pd.DataFrame({"query": list("abcde"), "relative_scale": [1.0, 4.0, 0.2, np.nan, 0.5]})
    assert largest_scale_changes(table, 2)["query"].tolist() == ["c", "b"]  # |log 0.2| > |log 4|
    assert largest_scale_changes(table, 10)["query"].tolist() == ["c", "b", "e", "a"]


def test_cli_overlap_and_nso_table_from_a_vop_ranking(tmp_path):
    import pandas as pd

    from vop.cli import main as vop_main
    from vop.io import GroundTruth, write_csv, write_gt

    names = ["wide.jpg", "close.jpg", "other.jpg"]
    truth = np.array([[1.0, 0.25, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    K, T = np.stack([K_matrix(200.0)] * 3), np.stack([np.eye(4)] * 3)
    write_gt(tmp_path / "gt.h5", GroundTruth(names, K, T, np.array([[W, H]] * 3), np.eye(3, dtype=np.float32),
                                             nso=truth, nso_source="depth"))
    header = ["query", "db", "rank", "score", "prefilter_score", "enclosure", "concentration"]
    write_csv(tmp_path / "scores.csv", header,
              [("wide.jpg", "close.jpg", 0, 1, 1, 0.3, 0.85), ("close.jpg", "wide.jpg", 0, 1, 1, 0.85, 0.3),
               ("other.jpg", "wide.jpg", 0, 1, 1, 0.0, 0.0)])
    assert vop_main(["overlap", "--type", "vop", "--scores", str(tmp_path / "scores.csv"), "--gt",
                     str(tmp_path / "gt.h5"), "--out", str(tmp_path / "overlap.csv")]) == 0
    got = pd.read_csv(tmp_path / "overlap.csv")
    assert got.true_enclosure.tolist() == [0.25, 1.0, 0.0] and got.true_concentration.tolist() == [1.0, 0.25, 0.0]
    assert got.relative_scale[:2].tolist() == pytest.approx([np.sqrt(0.3 / 0.85), np.sqrt(0.85 / 0.3)])
    assert got.true_relative_scale[1] == pytest.approx(2.0) and np.isnan(got.relative_scale[2])
    assert vop_main(["nso-table", "--run", "vop", "s", str(tmp_path / "overlap.csv"), "--out",
                     str(tmp_path / "nso.csv")]) == 0
    table = pd.read_csv(tmp_path / "nso.csv")
    # e1 = (0.05, -0.15, 0), e2 = (-0.15, 0.05, 0); no --features: no baseline, the votes' rows only
    assert table.scene.tolist() == ["s", "ALL"] and table.pairs.tolist() == [3, 3]
    assert table.predictor.tolist() == ["votes", "votes"] and got.baseline_enclosure.isna().all()
    assert table.rmse[0] == pytest.approx(np.sqrt(2 * (0.05**2 + 0.15**2) / 3), abs=1e-4)
    assert table.l1[0] == pytest.approx(2 * 0.2 / 3, abs=1e-4)
    assert table.acc[0] == pytest.approx(100 * 4 / 6, abs=1e-3)
    assert table.pairs_scale_2x.tolist() == [2, 2]  # (wide, close) and (close, wide): 2x either way
    # a ranking without the predicted NSO (written before it existed) is refused with the fix
    write_csv(tmp_path / "old.csv", ["query", "db", "rank", "score", "prefilter_score"],
              [("wide.jpg", "close.jpg", 0, 1, 1)])
    with pytest.raises(ValueError, match="rerun its rule"):
        vop_main(["overlap", "--type", "vop", "--scores", str(tmp_path / "old.csv"), "--gt", str(tmp_path / "gt.h5"),
                  "--out", str(tmp_path / "x.csv")])
