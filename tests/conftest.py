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
