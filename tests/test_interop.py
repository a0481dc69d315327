"""pairs.txt as written by the retrieval stage feeds COLMAP as it is: pycolmap matches exactly the listed
pairs (COLMAP's imported-pairs matcher reads the same `name0 name1` lines as hloc's pairs parser)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from vop.io import read_pairs, write_pairs

pycolmap = pytest.importorskip("pycolmap")


def textured(rng, w=320, h=240):
    noise = rng.uniform(0, 255, (h // 8, w // 8)).astype(np.uint8)
    return cv2.GaussianBlur(cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST), (3, 3), 0)


def pair_id(id0: int, id1: int) -> int:
    # COLMAP's pair id: the smaller image id first (2147483647 = kMaxNumImages).
    id0, id1 = min(id0, id1), max(id0, id1)
    return id0 * 2147483647 + id1



def colmap_matches_of_our_pairs(tmp_path: Path, images: Path, names: list[str]) -> Path:
    """COLMAP's own features and matches of the pairs in tmp_path/pairs.txt (its `matches_importer`)."""
    database = tmp_path / "database.db"
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    pycolmap.extract_features(database, images, image_names=names, extraction_options=options,
                              device=pycolmap.Device.cpu)
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(tmp_path / "pairs.txt")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 1
    matching.use_gpu = False
    pycolmap.match_image_pairs(database, matching_options=matching, pairing_options=pairing,
                               device=pycolmap.Device.cpu)
    return database

def test_colmap_matches_exactly_the_pairs_of_pairs_txt(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "dslr_images_undistorted").mkdir(parents=True)
    base = textured(rng, 400, 300)
    names = [f"dslr_images_undistorted/IMG_{k:04d}.JPG" for k in range(4)]
    for k, name in enumerate(names):  # overlapping crops: every pair has matches
        cv2.imwrite(str(images / name), base[10 * k:10 * k + 240, 12 * k:12 * k + 320])
    # Our writer, names with a sub-folder as ETH3D has them; one pair listed in both directions.
    pairs = [(names[0], names[1]), (names[0], names[2]), (names[3], names[1]), (names[1], names[0])]
    write_pairs(tmp_path / "pairs.txt", pairs)
    assert read_pairs(tmp_path / "pairs.txt") == pairs

    database = colmap_matches_of_our_pairs(tmp_path, images, names)

    db = pycolmap.Database.open(str(database))
    ids = {image.name: image.image_id for image in db.read_all_images()}
    assert sorted(ids) == sorted(names)
    expected = {pair_id(ids[a], ids[b]) for a, b in pairs}
    matched_ids, matches = db.read_all_matches()
    assert set(matched_ids) == expected  # nothing missing, nothing extra: (3, 1) and (1, 0) read as listed
    assert all(len(m) > 20 for m in matches)
    verified_ids, geometries = db.read_two_view_geometries()
    assert set(verified_ids) == expected
    assert all(len(g.inlier_matches) > 20 for g in geometries)
    db.close()


def test_colmap_reads_pairs_of_the_vpr_and_image_list_names(tmp_path):
    """The other protocols' names (UTM fields with '@', list paths with folders) in pairs.txt, as retrieve
    mode writes them (queries against the database), are matched by COLMAP exactly as listed."""
    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    base = textured(rng, 400, 300)
    names = ["database/@585014.00@4477006.76@17@T@@@db0000@@093@@@@@@.jpg",
             "database/sub/@585022.00@4477006.05@17@T@@@db0001@@267@@@@@@.jpg",
             "queries/@585025.15@4477007.03@17@T@@@q0000@@274@@@@@@.jpg"]
    for k, name in enumerate(names):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / name), base[10 * k:10 * k + 240, 12 * k:12 * k + 320])
    pairs = [(names[2], names[0]), (names[2], names[1])]
    write_pairs(tmp_path / "pairs.txt", pairs)
    database = colmap_matches_of_our_pairs(tmp_path, images, names)
    db = pycolmap.Database.open(str(database))
    ids = {image.name: image.image_id for image in db.read_all_images()}
    matched_ids, _ = db.read_all_matches()
    assert set(matched_ids) == {pair_id(ids[a], ids[b]) for a, b in pairs}
    db.close()
