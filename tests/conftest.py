"""Fixtures shared by test modules."""

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The workflow run once on the tiny synthetic config (tests/test_workflow.py), shared by every test
    module that reads its results: the pipeline is the slowest thing in the suite."""
    from test_workflow import TINY_CONFIG, snakemake, write_config

    workdir = tmp_path_factory.mktemp("tiny")
    write_config(workdir, TINY_CONFIG)
    snakemake(workdir, "results/tiny/auc.csv")
    return workdir


@pytest.fixture(scope="session")
def walk(tmp_path_factory):
    """A rendered 10-image walk (tests/walk_scene.py) with its gt.h5 and SIFT features (`local.h5`), shared by
    the triangulation, reconstruction and SfM tests (each writes under its own subfolder of it)."""
    from walk_scene import render_walk

    from vop.io import write_gt
    from vop.local_features import extract_local_features

    out = tmp_path_factory.mktemp("walk")
    scene = render_walk(out, seed=5, num_images=10)
    write_gt(out / "gt.h5", scene.gt)
    extract_local_features(scene.image_dir, scene.gt.names, out / "local.h5", num_workers=2)
    return scene, out
