import collections
import datetime
import os
import pickle
import warnings

import numpy as np
import pytest

from vop.protocols import gl3d, revisitop, vpr

# ---------------------------------------------------------------------------------------------------
# VPR

NAME = "database/@0543256.96@4178906.65@10@S@037.75643@-122.50972@@@@@@@@.jpg"


def test_parse_utm_reads_the_basename():
    assert vpr.parse_utm(NAME) == (543256.96, 4178906.65)
    # an '@' in a folder would shift the fields of the whole path; only the basename counts
    assert vpr.parse_utm("runs@2/queries/@12.5@-3@17@T@.jpg") == (12.5, -3.0)


@pytest.mark.parametrize("name", ["queries/no_position.jpg", "@east@north@.jpg", "@12.5.jpg", "@nan@1@.jpg"])
def test_parse_utm_refuses_names_without_position(name):
    with pytest.raises(ValueError, match="@UTM_east@UTM_north") as err:
        vpr.parse_utm(name)
    assert repr(name) in str(err.value)


def test_positives_inclusive_radius():
    db = np.array([[0, 0], [15, 20], [25.01, 0], [100, 100], [-25, 0]], float)
    queries = np.array([[0, 0], [100, 90], [1000, 1000]], float)
    pos = vpr.positives(db, queries, dist_m=25.0)
    assert [p.tolist() for p in pos] == [[0, 1, 4], [3], []]  # (15, 20) and (-25, 0) are exactly 25 m away
    assert [p.tolist() for p in vpr.positives(db, queries, dist_m=10.0)] == [[0], [3], []]
    assert [p.tolist() for p in vpr.positives(np.zeros((0, 2)), queries)] == [[], [], []]
    with pytest.raises(ValueError, match=r"\(N,2\)"):
        vpr.positives(np.zeros((3, 3)), queries)


def test_recall_counts_queries_without_positives_as_misses():
    rankings = np.tile(np.arange(100, 120), (4, 1))
    positives = [np.array([100]),             # rank 0: a hit from N = 1
                 np.array([107, 500]),        # rank 7: from N = 10
                 np.array([], np.int64),      # no positive at all: a miss, still in the denominator
                 np.array([115])]             # rank 15: from N = 20
    assert vpr.recall_at_n(rankings, positives) == {1: 25.0, 5: 25.0, 10: 50.0, 20: 75.0}
    assert vpr.recall_at_n(rankings[:, :5], positives, ns=(1, 5)) == {1: 25.0, 5: 25.0}


def test_recall_needs_k_at_least_max_n():
    with pytest.raises(ValueError, match="at least 20"):
        vpr.recall_at_n(np.zeros((2, 10), int), [np.array([0]), np.array([1])])
    with pytest.raises(ValueError, match="same query list"):
        vpr.recall_at_n(np.zeros((2, 20), int), [np.array([0])])


# ---------------------------------------------------------------------------------------------------
# revisitop


def test_average_precision_trapezoids():
    # rank 0: (1 + 1)/2 * 1/3; rank 2 (second positive): (1/2 + 2/3)/2 * 1/3  ->  19/36
    assert revisitop.average_precision([0, 2], 3) == pytest.approx(19 / 36)
    assert revisitop.average_precision([1], 1) == pytest.approx(0.25)  # (0/1 + 1/2)/2
    assert revisitop.average_precision([], 4) == 0.0
    with pytest.raises(ValueError, match="num_positives"):
        revisitop.average_precision([], 0)


def _full(first, n=10):
    return list(first) + [i for i in range(n) if i not in first]


def test_compute_map_junk_before_and_between_and_empty_queries():
    ranking = np.array([_full([5, 1, 7, 2, 3]), _full([]), _full([0])])
    sets = [(np.array([1, 3]), np.array([5, 2])),   # positives at 1 and 4; junk at 0 and 3 -> positions 0 and 2
            (np.array([], np.int64), np.array([0])),  # no positives: NaN, out of both means
            (np.array([0]), np.array([], np.int64))]
    res = revisitop.compute_map(ranking, sets, kappas=(1, 5, 10))
    assert res.aps[0] == pytest.approx(19 / 24)
    assert np.isnan(res.aps[1]) and np.isnan(res.prs[1]).all()
    assert res.aps[2] == 1.0
    assert res.num_evaluated == 2
    assert res.map == pytest.approx((19 / 24 + 1) / 2)
    # P@k at min(k, last positive's 1-based position 3): P@1 = 1, P@5 = P@10 = 2/3
    assert res.prs[0] == pytest.approx([1, 2 / 3, 2 / 3])
    assert res.mp == pytest.approx({1: 1.0, 5: (2 / 3 + 1) / 2, 10: (2 / 3 + 1) / 2})
    assert res.map_percent == pytest.approx(res.map * 100)
    with pytest.raises(ValueError, match="no query has a positive"):
        revisitop.compute_map(ranking[:1], [(np.array([], np.int64), np.array([1]))])


def _gnd():
    q0 = revisitop.QueryGround(np.array([1.0, 2, 3, 4]), easy=np.array([1]), hard=np.array([3]), junk=np.array([5]))
    q1 = revisitop.QueryGround(np.array([0.0, 0, 1, 1]), easy=np.array([2]), hard=np.array([], np.int64),
                               junk=np.array([], np.int64))
    return revisitop.Ground([f"db{i}" for i in range(10)], ["q0", "q1"], [q0, q1])


def test_protocol_sets():
    gnd = _gnd()
    (ok, junk), _ = revisitop.protocol_sets(gnd, "easy")
    assert ok.tolist() == [1] and sorted(junk.tolist()) == [3, 5]
    (ok, junk), _ = revisitop.protocol_sets(gnd, "medium")
    assert sorted(ok.tolist()) == [1, 3] and junk.tolist() == [5]
    (ok, junk), _ = revisitop.protocol_sets(gnd, "hard")
    assert ok.tolist() == [3] and sorted(junk.tolist()) == [1, 5]
    with pytest.raises(ValueError, match="unknown revisitop protocol"):
        revisitop.protocol_sets(gnd, "extreme")


def test_evaluate_protocols():
    ranking = np.array([_full([3, 0, 5, 1]), _full([2])])
    res = revisitop.evaluate(ranking, _gnd())
    # easy: positive 1 at position 3 with junk 3, 5 before it -> 1: AP (0 + 1/2)/2 = 1/4; query 1: AP 1
    assert res["easy"].map == pytest.approx((0.25 + 1) / 2)
    # medium: 3 at 0, 1 at 3 - 1 junk = 2 -> 19/24
    assert res["medium"].map == pytest.approx((19 / 24 + 1) / 2)
    # hard: only query 0 has a hard positive, at position 0
    assert res["hard"].map == 1.0 and res["hard"].num_evaluated == 1
    assert res["easy"].mp_percent[1] == pytest.approx(50.0)  # query 0: P@1 = 0 (position 2, 1-based), query 1: 1
    with pytest.raises(ValueError, match="whole database"):
        revisitop.evaluate(ranking[:, :5], _gnd())


class Custom:
    pass


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _gnd_dict():
    return {"imlist": ["a", "b", "c", "d"], "qimlist": ["q"],
            "gnd": [{"bbx": [1.5, 2.0, 30.0, 40.25], "easy": np.array([0, 2]), "hard": [np.int64(3)],
                     "junk": np.zeros(0, np.int64)}]}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_load_ground_truth_accepts_plain_data(tmp_path, protocol):
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps(_gnd_dict(), protocol=protocol))
    gnd = revisitop.load_ground_truth(path)
    assert gnd.imlist == ["a", "b", "c", "d"] and gnd.qimlist == ["q"]
    q = gnd.queries[0]
    assert q.bbx.tolist() == [1.5, 2.0, 30.0, 40.25]
    assert q.easy.tolist() == [0, 2] and q.hard.tolist() == [3] and q.junk.tolist() == []
    assert q.easy.dtype == np.int64


def test_load_ground_truth_reads_numpy1_pickles(tmp_path):
    # numpy 1.x writes numpy.core.multiarray._reconstruct; numpy 2 moved it to numpy._core (and warns on the old)
    data = pickle.dumps(_gnd_dict(), protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    path = tmp_path / "gnd_rparis6k.pkl"
    path.write_bytes(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gnd = revisitop.load_ground_truth(path)
    assert gnd.queries[0].easy.tolist() == [0, 2]


@pytest.mark.parametrize("payload, name", [(os.system, "system"), (Custom(), "Custom")])
def test_load_ground_truth_refuses_other_globals(tmp_path, payload, name):
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [payload]}))
    with pytest.raises(pickle.UnpicklingError, match=name) as err:
        revisitop.load_ground_truth(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("payload, name", [({1, 2}, "set"), (frozenset([1]), "frozenset"), (complex(1, 2), "complex"),
                                           (range(3), "range"), (datetime.date(2020, 1, 2), "date"),
                                           (collections.OrderedDict(a=1), "OrderedDict")])
def test_load_ground_truth_refuses_anything_but_arrays_lists_dicts_and_strings(tmp_path, payload, name):
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [], "extra": payload}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=f"refusing global .*{name}"):
        revisitop.load_ground_truth(path)


def test_load_ground_truth_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        revisitop.load_ground_truth(path)
    assert not marker.exists()


def test_load_ground_truth_checks_indices(tmp_path):
    data = _gnd_dict()
    data["gnd"][0]["junk"] = [7]
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=r"gnd\[0\]\['junk'\].*4 database images"):
        revisitop.load_ground_truth(path)


# ---------------------------------------------------------------------------------------------------
# GL3D


def test_overlap_ap_hand_computed():
    # hit (recall .5, precision 1): .5 * (1 + 1)/2; miss: 0; hit (1, 2/3): .5 * (1/2 + 2/3)/2  ->  19/24
    assert gl3d.overlap_ap([1, 5, 2], {1, 2}) == pytest.approx(19 / 24)
    assert gl3d.overlap_ap([5, 1], {1, 2}) == pytest.approx(0.5 * (0.0 + 0.5) / 2)
    assert gl3d.overlap_ap([], {1}) == 0.0


def test_map_at_k_self_pair_takes_a_place_but_no_rank():
    gt = [{1, 2}, set(), {0}]
    rankings = [[0, 1, 5, 2], [1, 0], [2, 1]]  # query 0 with its self pair first, as in match_pairs
    # query 0: self dropped -> [1, 5, 2] = 19/24; query 1 has no partner (skipped); query 2: [1] -> 0
    assert gl3d.map_at_k(rankings, gt, k=4) == pytest.approx((19 / 24 + 0) / 2)
    # k counts the self pair: k = 3 keeps [0, 1, 5] -> [1, 5] -> .5
    assert gl3d.map_at_k(rankings, gt, k=3) == pytest.approx(0.5 / 2)
    # lists shorter than k are scored on what they hold
    assert gl3d.map_at_k(rankings, gt, k=200) == gl3d.map_at_k(rankings, gt, k=4)
    aps = gl3d.overlap_aps(rankings, gt, k=4)
    assert np.isnan(aps[1]) and aps[2] == 0.0
    with pytest.raises(ValueError, match="every image"):
        gl3d.map_at_k(rankings[:2], gt)
    with pytest.raises(ValueError, match="no image has a ground-truth partner"):
        gl3d.map_at_k([[1], [0]], [set(), set()])


def test_read_gt_pairs_directed(tmp_path, caplog):
    path = tmp_path / "gl3d_gt_pairs"
    path.write_text("0 1\n1 1\n\n2 0\n0 2\n0 1\n")
    gt = gl3d.read_gt_pairs(path, 3)
    # `0 1` does not make 0 a partner of 1; `1 1` is skipped; the repeated `0 1` is kept, as MIRorR keeps it
    assert gt == [[1, 2, 1], [], [0]]
    assert "1 repeated pair line(s)" in caplog.text
    # |gt| counts the repeat: retrieving both partners first reaches recall 2/3, not 1
    assert gl3d.overlap_ap([1, 2], gt[0]) == pytest.approx(1 / 3 * 1 + 1 / 3 * 1)
    path.write_text("0 1\n0 3\n")
    with pytest.raises(ValueError, match=r"gl3d_gt_pairs:2: pair \(0, 3\) is outside the 3 images"):
        gl3d.read_gt_pairs(path, 3)
    path.write_text("0\n")
    with pytest.raises(ValueError, match="gl3d_gt_pairs:1: expected 'i j'"):
        gl3d.read_gt_pairs(path, 3)


def test_match_pairs_round_trip(tmp_path):
    path = tmp_path / "match_pairs.txt"
    gl3d.write_match_pairs(path, [[2, 1], [0, 1, 2]], [[0.9, 0.25], [0.8, 0.7, 0.1]])
    assert path.read_text().splitlines()[:3] == ["0 0 1.0", "0 2 0.9", "0 1 0.25"]
    rankings, scores = gl3d.read_match_pairs(path, 3)
    assert rankings == [[0, 2, 1], [1, 0, 2], []]  # query 1's own entry is written once, first
    assert scores == [[1.0, 0.9, 0.25], [1.0, 0.8, 0.1], []]
    gl3d.write_match_pairs(path, [[1]], [[0.5]], self_scores=[3.0])
    assert gl3d.read_match_pairs(path, 2) == ([[0, 1], []], [[3.0, 0.5], []])
    with pytest.raises(ValueError, match="2 retrieved images but 1 scores"):
        gl3d.write_match_pairs(path, [[1, 2]], [[0.5]])


def test_read_image_list(tmp_path):
    path = tmp_path / "eval_img_list.txt"
    path.write_text("a/1.JPG\n/abs/2.JPG\n  b/3.JPG  \n\n\n")
    assert gl3d.read_image_list(path) == ["a/1.JPG", "/abs/2.JPG", "b/3.JPG"]
    assert gl3d.read_image_list(path, root="/data/gl3d") == ["/data/gl3d/a/1.JPG", "/abs/2.JPG",
                                                              "/data/gl3d/b/3.JPG"]
    path.write_text("a/1.JPG\n\nb/3.JPG\n")
    with pytest.raises(ValueError, match="eval_img_list.txt:2: blank line"):
        gl3d.read_image_list(path)
