"""vop.config_errors against the real schema and config: first lines that lead with the fix, and defaults
filled exactly as snakemake.utils.validate fills them."""

import copy
from pathlib import Path

import pytest
import yaml

from vop.conf import ConfigError, key_path
from vop.config_errors import validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


@pytest.fixture
def config():
    with open(ROOT / "config/config.yaml") as f:
        return yaml.safe_load(f)


def _error(config) -> ConfigError:
    before = copy.deepcopy(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA, source="config/config.yaml")
    assert config == before  # no defaults half filled in
    lines = str(info.value).splitlines()
    assert len(lines) <= 6 and all(len(line) < 200 for line in lines)  # no schema dump
    assert lines[-1] == "  (in config/config.yaml)"
    return info.value


def _first(config) -> str:
    return str(_error(config)).splitlines()[0]


def _snakemake_validate(config, schema):
    from snakemake.utils import validate

    validate(config, str(schema))


def test_valid_config_gets_the_same_defaults_as_snakemake(config):
    ours, theirs = copy.deepcopy(config), copy.deepcopy(config)
    validate_config(ours, SCHEMA)
    _snakemake_validate(theirs, SCHEMA)
    assert ours == theirs
    assert ours != config  # defaults were filled in...
    assert ours["methods"]["vop"]["chunk_images"] == 4096
    assert ours["datasets"]["demo"]["synthetic"]["textures"] == "eval"
    assert ours["datasets"]["mary_rose"]["model"] == "sparse" and "model" not in ours["datasets"]["demo"]
    assert ours["backbones"]["dense_sift"]["weights"] == "auto"  # (a backbone without weights ignores it)
    assert "ivf_min_images" not in ours["methods"]["vop"]  # ...but, as snakemake, none behind a $ref


def test_minimal_config_gets_nested_defaults_like_snakemake():
    minimal = {
        "datasets": {"d": {"source": "synthetic", "backbone": "dense_sift", "methods": ["r"], "synthetic": {}}},
        "backbones": {"dense_sift": {}},
        "encoders": {"e": {"type": "vop", "backbone": "dense_sift", "train": {"datasets": ["d"]}}},
        "methods": {"r": {"type": "random", "k": 3}, "v": {"type": "vop", "k": 3, "encoder": "e", "prefilter": 9}},
    }
    ours, theirs = copy.deepcopy(minimal), copy.deepcopy(minimal)
    validate_config(ours, SCHEMA)
    _snakemake_validate(theirs, SCHEMA)
    assert ours == theirs
    assert ours["labels"] == {"pairs_per_bin": 40, "num_negative": 40, "stride": 2, "seed": 0, "depth_tol": 0.05,
                              "geometry": "auto"}
    assert ours["pose"]["threshold_px"] == [0.5, 1.5, 2.0, 3.0]
    assert ours["datasets"]["d"]["synthetic"]["num_images"] == 24
    assert ours["encoders"]["e"]["train"]["epochs"] == 30
    assert ours["methods"]["r"]["seed"] == 0 and ours["methods"]["v"]["radius"] == "auto"
    assert "radius" not in ours["methods"]["r"]  # a then-branch fills only when its `if` holds
    ours["pose"]["threshold_px"].append(9.0)  # defaults are copies, not the schema's objects
    again = copy.deepcopy(minimal)
    validate_config(again, SCHEMA)
    assert again["pose"]["threshold_px"] == [0.5, 1.5, 2.0, 3.0]


def test_typo_in_a_method_key(config):
    config["methods"]["vop"]["prefiltr"] = config["methods"]["vop"].pop("prefilter")
    error = _error(config)
    lines = str(error).splitlines()
    assert lines[0] == "methods.vop.prefiltr: unknown key; did you mean 'prefilter'?"
    assert lines[1].startswith("  allowed here: type, k, encoder, prefilter, radius")
    assert "missing" not in str(error)  # 'prefilter' missing is the same problem, not repeated
    assert error.path == ("methods", "vop", "prefiltr") and isinstance(error, ValueError)


def test_typo_in_a_dataset_key(config):
    config["datasets"]["demo"]["scenez"] = config["datasets"]["demo"].pop("scenes")
    assert _first(config) == "datasets.demo.scenez: unknown key; did you mean 'scenes'?"


def test_typo_at_the_top_level(config):
    config["metric"] = config.pop("metrics")
    assert _first(config) == "metric: unknown key; did you mean 'metrics'?"


def test_wrong_enum_value(config):
    config["datasets"]["eth3d"]["source"] = "eth3"
    lines = str(_error(config)).splitlines()
    assert lines[0] == "datasets.eth3d.source: 'eth3' is not allowed; did you mean 'eth3d'?"
    assert lines[1].startswith("  allowed: synthetic, eth3d, megadepth, inloc, colmap, folder, ") and lines[1].endswith(
        "or a reader class as module:Class")
    config["datasets"]["eth3d"]["source"] = "eth3d"
    config["datasets"]["demo"]["source"] = "synthetc"  # its `synthetic:` block then belongs to no source
    lines = str(_error(config)).splitlines()
    assert lines[0] == "datasets.demo.source: 'synthetc' is not allowed; did you mean 'synthetic'?"
    # the `synthetic:` block is wrong only through the source: fixing the source is all there is to say
    assert not any("datasets.demo.synthetic" in line for line in lines)


def test_wrong_type(config):
    config["methods"]["vop"]["k"] = "5"
    assert _first(config) == "methods.vop.k: expected an integer, got a string ('5'); write 5 without quotes"
    config["methods"]["vop"]["k"] = 5
    vop = config["methods"]["vop"]
    config["methods"]["vop"] = "x"  # all errors are collected: filling then-branch defaults must skip it
    assert _first(config) == "methods.vop: expected a mapping (key: value), got a string ('x')"
    config["methods"]["vop"] = vop
    config["datasets"]["megadepth"]["scenes"] = ["0015", 13]  # YAML reads an unquoted 0015 as a number
    assert _first(config).startswith(
        "datasets.megadepth.scenes[1]: expected a string, got an integer (13); put it in quotes")


def test_missing_required_key(config):
    del config["methods"]["cls"]["k"]
    lines = str(_error(config)).splitlines()
    assert lines[0] == "methods.cls.k: missing; required with type: cls"  # (exhaustive's k is implied)
    assert lines[1] == "  methods.cls has: type"
    config["methods"]["cls"]["k"] = 5
    del config["methods"]["vop"]["encoder"]
    assert _first(config) == "methods.vop.encoder: missing; required with type: vop"


def test_key_of_another_method_type(config):
    config["methods"]["cls"]["prefilter"] = 20
    assert _first(config) == ("methods.cls.prefilter: not allowed here (only with type: vop); "
                              "allowed here: type, k, ivf_min_images, ivf_nprobe, nso_chance")
    del config["methods"]["cls"]["prefilter"]
    config["methods"]["cls"]["prefiltr"] = 20
    assert _first(config) == "methods.cls.prefiltr: unknown key; did you mean 'prefilter'? (only with type: vop)"


def test_typo_in_the_key_that_selects_the_branch(config):
    # Without `type`, every method branch applies (an `if` on a missing key holds): their complaints
    # about each other's keys are left out, and "allowed here" lists the keys of all of them.
    config["methods"]["cls"]["typ"] = config["methods"]["cls"].pop("type")
    lines = str(_error(config)).splitlines()
    assert lines[0] == "methods.cls.typ: unknown key; did you mean 'type'?"
    assert lines[1].startswith("  allowed here: type, k, encoder, prefilter") and len(lines) == 3
    config["methods"]["cls"]["type"] = config["methods"]["cls"].pop("typ")
    del config["methods"]["vop"]["type"]
    lines = str(_error(config)).splitlines()
    assert lines[:2] == ["methods.vop.type: missing; this key is required",
                         "  methods.vop has: encoder, k, prefilter, radius, tfidf"]  # as written: no defaults


def test_alternatives(config):
    config["methods"]["vop"]["radius"] = "autoo"
    lines = str(_error(config)).splitlines()
    assert lines[:2] == ["methods.vop.radius: 'autoo' is not allowed; did you mean 'auto'?",
                         "  allowed: auto, or a number > 0 and <= 1"]
    config["methods"]["vop"]["radius"] = 0.2
    config["pose"]["threshold_px"] = [0.5, -1]  # clearly meant as the list form: its item is explained
    assert _first(config) == "pose.threshold_px[1]: -1 is less than or equal to the minimum of 0"
    config["pose"]["threshold_px"] = 1.0
    del config["encoders"]["vop_sift"]["train"]
    assert _first(config) == "encoders.vop_sift: needs one of the keys 'train' or 'checkpoint'"
    config["encoders"]["vop_sift"]["train"] = {"datasets": ["demo_train"]}
    config["encoders"]["vop_sift"]["checkpoint"] = "vop.ckpt"
    assert _first(config) == "encoders.vop_sift: give only one of the keys 'train' or 'checkpoint'"


def test_key_of_another_source(config):
    config["datasets"]["demo"]["model"] = "sparse"  # a colmap key on a synthetic dataset
    assert _first(config).startswith("datasets.demo.model: not allowed here (only with source: colmap); "
                                     "allowed here: source, root, url, scenes")
    del config["datasets"]["demo"]["model"]
    config["datasets"]["mary_rose"]["imags"] = "images"
    assert _first(config) == "datasets.mary_rose.imags: unknown key; did you mean 'images'?"


def test_names_of_entries(config):
    config["backbones"]["dinov2_vitl4"] = config["backbones"].pop("dinov2_vitl14")
    assert _first(config) == "backbones.dinov2_vitl4: unknown name; did you mean 'dinov2_vitl14'?"
    config["backbones"]["dinov2_vitl14"] = config["backbones"].pop("dinov2_vitl4")
    config["datasets"]["my data"] = config["datasets"].pop("demo")
    assert _first(config) == "datasets['my data']: the name does not match '^[A-Za-z0-9_.-]+$'"


def test_several_problems_are_listed_briefly(config):
    config["methods"]["vop"]["prefiltr"] = config["methods"]["vop"].pop("prefilter")
    config["datasets"]["eth3d"]["source"] = "eth3"
    config["metrics"]["overlap_tau"] = 2
    config["labels"]["stride"] = 0
    lines = str(_error(config)).splitlines()
    # Two typos rank alike; the one met first (schema order: datasets before methods) leads.
    assert lines[0] == "datasets.eth3d.source: 'eth3' is not allowed; did you mean 'eth3d'?"
    assert "  also: methods.vop.prefiltr: unknown key; did you mean 'prefilter'?" in lines
    assert sum(line.startswith("  also: ") for line in lines) == 2
    assert lines[-2] == "  ... and 1 more problem(s)"


def test_snakemake_message_is_the_long_one(config):
    # Why this module exists: snakemake.utils.validate's message dumps schema and instance.
    from snakemake.exceptions import WorkflowError

    config["methods"]["vop"]["prefiltr"] = config["methods"]["vop"].pop("prefilter")
    with pytest.raises(WorkflowError) as info:
        _snakemake_validate(copy.deepcopy(config), SCHEMA)
    assert len(str(info.value).splitlines()) > 30
    assert "prefiltr" in _first(config)


def test_key_path():
    assert key_path(()) == "config"
    assert key_path(("datasets", "demo", "scenes", 1)) == "datasets.demo.scenes[1]"
    assert key_path(("datasets", "a.b", "root")) == "datasets['a.b'].root"
