"""The batched matcher (vop.matching.match_pairs) gives the straightforward matcher's matches."""

import itertools

import numpy as np
import pytest

from vop.conf import LocalFeaturesConf
from vop.datasets import open_scene, synthetic
from vop.io import read_gt
from vop.local_features import extract_local_features, read_local_features
from vop.matching import match_descriptors, match_pairs


@pytest.fixture(scope="module")
def sift_scene(tmp_path_factory):
    """SIFT of a small rendered scene (the demo's renderer): real descriptors, overlapping views."""
    root = tmp_path_factory.mktemp("sift_scene")
    synthetic.generate_scene(root / "scene", seed=11, num_images=6, width=320, height=240)
    open_scene("synthetic", root, "scene").write_ground_truth(root / "gt.h5")
    gt = read_gt(root / "gt.h5")
    extract_local_features(root / "scene" / "images", gt.names, root / "local.h5",
                           LocalFeaturesConf(max_keypoints=1500), num_workers=1)
    return root, gt, read_local_features(root / "local.h5", gt.names)


def near_tie(d0, d1, i, ratio, eps=1e-5):
    """Whether row i's decision (nearest neighbour, mutual check, ratio test) is within float32 rounding."""
    d0 = d0 / np.linalg.norm(d0, axis=1, keepdims=True)
    d1 = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
    sim = d0.astype(np.float64) @ d1.astype(np.float64).T
    row = np.sort(sim[i])[::-1]
    j = int(np.argmax(sim[i]))
    col = np.sort(sim[:, j])[::-1]
    margins = [row[0] - row[1] if len(row) > 1 else 1.0, col[0] - col[1] if len(col) > 1 else 1.0]
    if len(row) > 1:
        margins.append(abs(np.sqrt(max(2 - 2 * row[0], 0)) - ratio * np.sqrt(max(2 - 2 * row[1], 0))))
    return min(margins) < eps


def assert_same_matches(desc0, desc1, got, ratio):
    """`got` equals match_descriptors, but for decisions that float32 rounding may tip either way."""
    expected = match_descriptors(desc0, desc1, ratio)
    if np.array_equal(got, expected):
        return
    a, b = {tuple(m) for m in got.tolist()}, {tuple(m) for m in expected.tolist()}
    rows = {i for i, _ in a ^ b}
    assert all(near_tie(desc0, desc1, i, ratio) for i in rows), f"rows {sorted(rows)} differ and are not ties"
    assert len(rows) <= max(1, len(expected) // 1000)


def test_match_pairs_equals_the_straightforward_matcher_on_sift(sift_scene):
    _, gt, features = sift_scene
    descriptors = {n: f["descriptors"] for n, f in features.items()}
    pairs = list(itertools.permutations(gt.names, 2))  # both orientations: the ratio test is one-sided
    for ratio in (0.8, 0.95):
        found = match_pairs(descriptors, pairs, ratio, device="cpu")
        for (a, b), (matches, scores) in zip(pairs, found):
            assert_same_matches(descriptors[a], descriptors[b], matches, ratio)
            assert matches.dtype == np.int64 and (np.diff(matches[:, 0]) > 0).all()
            d0 = descriptors[a][matches[:, 0]] / np.linalg.norm(descriptors[a][matches[:, 0]], axis=1, keepdims=True)
            d1 = descriptors[b][matches[:, 1]] / np.linalg.norm(descriptors[b][matches[:, 1]], axis=1, keepdims=True)
            np.testing.assert_allclose(scores, (d0 * d1).sum(axis=1), atol=1e-5)  # the matches' cosines
    total = sum(len(m) for m, _ in match_pairs(descriptors, pairs, 0.8, device="cpu"))
    assert total > 10 * len(pairs)  # overlapping views: the comparison is not vacuous


def test_float16_descriptors_give_the_same_matches(sift_scene):
    # The CUDA path's arithmetic (raw float16 descriptors, float32 similarities scaled by inverse norms),
    # here on the CPU.
    _, gt, features = sift_scene
    descriptors = {n: f["descriptors"] for n, f in features.items()}
    pairs = list(itertools.combinations(gt.names, 2))
    for (a, b), (matches, _) in zip(pairs, match_pairs(descriptors, pairs, 0.8, device="cpu", half=True)):
        assert_same_matches(descriptors[a], descriptors[b], matches, 0.8)


def dyadic(rng, n, dims=16):
    """Unit vectors of four entries 0.5: every similarity (0, .25, .5, .75, 1) is exact in float32, so ties
    are exact and frequent, and both matchers must break them the same way."""
    d = np.zeros((n, dims), np.float32)
    for row in d:
        row[rng.choice(dims, 4, replace=False)] = 0.5
    return d


@pytest.mark.parametrize("batch_bytes", [1, 1 << 30])  # one pair per batch; all pairs in one batch
def test_exact_ties_and_edge_cases_as_the_straightforward_matcher(batch_bytes):
    rng = np.random.default_rng(0)
    descriptors = {f"i{k}": dyadic(rng, int(rng.integers(2, 90))) for k in range(8)}
    descriptors["i0"][10:20] = descriptors["i0"][:10]  # duplicate rows: column ties
    descriptors["i1"][:5] = descriptors["i0"][:5]  # exact matches
    descriptors["one"] = descriptors["i2"][:1]  # no second neighbour: the ratio test cannot reject
    descriptors["none"] = np.zeros((0, 16), np.float32)
    names = list(descriptors)
    pairs = list(itertools.permutations(names, 2))
    for ratio in (0.8, 1.0):
        found = match_pairs(descriptors, pairs, ratio, device="cpu", batch_bytes=batch_bytes)
        for (a, b), (matches, _) in zip(pairs, found):
            np.testing.assert_array_equal(matches, match_descriptors(descriptors[a], descriptors[b], ratio),
                                          err_msg=f"{a} {b} ratio {ratio}")
    found = dict(zip(pairs, match_pairs(descriptors, pairs, 1.0, device="cpu", batch_bytes=batch_bytes)))
    assert found[("none", "i1")][0].shape == (0, 2) and found[("i1", "none")][0].shape == (0, 2)
    assert len(found[("one", "i2")][0]) == 1


def test_batches_do_not_change_the_matches(sift_scene):
    _, gt, features = sift_scene
    descriptors = {n: f["descriptors"] for n, f in features.items()}
    pairs = list(itertools.combinations(gt.names, 2))
    alone = match_pairs(descriptors, pairs, 0.8, device="cpu", batch_bytes=1)
    together = match_pairs(descriptors, pairs, 0.8, device="cpu", batch_bytes=1 << 32)
    for (m1, s1), (m2, s2) in zip(alone, together):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(s1, s2)
