"""One conf per stage, defaults in one place: the JSON schema states exactly the confs' keys and defaults."""

from pathlib import Path

import pytest
import yaml

from vop import conf
from vop.conf import ConfigError, default_of, fields_of
from vop.datasets import SOURCES, reader_class
from vop.workflow import load_datasets

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def resolve(node):
    """Follow a `$ref` into the schema's `$defs`."""
    while isinstance(node, dict) and "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def branch(node, key, value):
    """The `then` block of an allOf `if: {properties: {key: {const: value}}}`."""
    for case in node["allOf"]:
        if case["if"]["properties"][key].get("const") == value:
            return case["then"]
    raise KeyError(value)


def schema_blocks():
    p = SCHEMA["properties"]
    datasets = p["datasets"]["additionalProperties"]
    vop_encoder = branch(p["encoders"]["additionalProperties"], "type", "vop")
    methods = p["methods"]["additionalProperties"]
    blocks = {
        "labels": (p["labels"], conf.LabelsConf),
        "local_features": (p["local_features"], conf.LocalFeaturesConf),
        "matching": (p["matching"], conf.MatchingConf),
        "pose": (p["pose"], conf.PoseConf),
        "metrics": (p["metrics"], conf.MetricsConf),
        "triangulation": (p["triangulation"], conf.TriangulationConf),
        "software": (p["software"], conf.SoftwareConf),
        "backbones.<name>": (p["backbones"]["additionalProperties"], conf.BackboneConf),
        "encoders.<vop>": (vop_encoder, conf.EncoderConf),
        "encoders.<vop>.train": (vop_encoder["properties"]["train"], conf.TrainConf),
        "datasets.<name>": (datasets, conf.DatasetConf),
    }
    for source in ("synthetic", "colmap", "folder"):
        then = branch(datasets, "source", source)
        blocks[f"datasets.<{source}>"] = (then, reader_class(source).Options)
    synthetic_block = branch(datasets, "source", "synthetic")["properties"]["synthetic"]
    blocks["datasets.<synthetic>.synthetic"] = (resolve(synthetic_block), conf.SyntheticConf)
    for source in ("vpr", "image_list", "synthetic_vpr", "synthetic_revisitop", "synthetic_image_list"):
        blocks[f"datasets.<{source}>"] = (branch(datasets, "source", source), reader_class(source).Options)
    for kind, method in conf.METHOD_CONFS.items():
        then = branch(methods, "type", kind)
        props = {**methods["properties"], **then["properties"]}  # type and k live at the entry's top
        blocks[f"methods.<{kind}>"] = ({"properties": props, "required": then.get("required", [])}, method)
    return blocks


def schema_default(prop):
    """A property's default; `{}` of an object with properties means each of theirs."""
    default = prop["default"]
    if default == {} and "properties" in prop:
        return {key: resolve(value).get("default") for key, value in prop["properties"].items()}
    return default


@pytest.mark.parametrize("where", list(schema_blocks()))
def test_schema_states_the_confs_keys_and_defaults(where):
    block, conf_class = schema_blocks()[where]
    props = {key: resolve(value) for key, value in block["properties"].items()}
    fields = fields_of(conf_class)
    assert set(props) == set(fields), f"{where}: schema keys differ from {conf_class.__name__}'s fields"
    for key, f in fields.items():
        if key == "type" or key in block.get("required", ()):
            continue  # the discriminator, and keys the config must give (a conf may still default them)
        if "default" in props[key]:
            assert schema_default(props[key]) == default_of(f), f"{where}.{key}"
        elif default_of(f) is not None:  # a conf default the schema does not state
            pytest.fail(f"{where}.{key}: {conf_class.__name__} defaults to {default_of(f)!r}, the schema says nothing")


def test_every_source_is_registered_with_its_own_schema_block():
    datasets = SCHEMA["properties"]["datasets"]["additionalProperties"]
    assert datasets["properties"]["source"]["anyOf"][0]["enum"] == list(SOURCES)
    for source in SOURCES:
        cls = reader_class(source)
        assert cls.source == source
        if fields_of(cls.Options):
            assert branch(datasets, "source", source)["properties"].keys() == fields_of(cls.Options).keys()


def test_the_shipped_config_builds_every_conf():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    datasets = load_datasets(config)
    assert datasets["demo"].reader.generated and datasets["mary_rose"].single_scene
    assert datasets["eth3d"].scenes[0] == "courtyard" and len(datasets["eth3d"].scenes) == 13  # the source's
    assert datasets["inloc"].mode == "retrieve" and datasets["inloc"].queries == "query/iphone7/*"
    for name, entry in config["methods"].items():
        conf.method_conf(entry, f"methods.{name}")
    for name, block in conf.STAGE_CONFS.items():
        block_conf = block.from_dict(config.get(name), name)
        assert block_conf.to_dict().keys() == fields_of(block).keys()


def test_from_dict_names_the_key_and_suggests_the_fix():
    with pytest.raises(ConfigError) as info:
        conf.method_conf({"type": "vop", "k": 5, "encoder": "e", "prefiltr": 20}, "methods.vop")
    assert str(info.value).splitlines()[0] == "methods.vop.prefiltr: unknown key; did you mean 'prefilter'?"
    allowed = "  allowed here: type, k, ivf_min_images, ivf_nprobe, nso_chance, encoder"
    assert str(info.value).splitlines()[1].startswith(allowed)
    assert info.value.path == ("methods", "vop", "prefiltr")
    with pytest.raises(ConfigError, match=r"^methods\.vop\.prefilter: missing; this key is required\n"
                                          r"  methods\.vop has: type, k, encoder$"):
        conf.method_conf({"type": "vop", "k": 5, "encoder": "e"}, "methods.vop")
    with pytest.raises(ConfigError, match=r"^methods\.x\.type: 'vopp' is not a method type; did you mean 'vop'\?\n"
                                          r"  allowed: cls, vop, oracle, random, verify, exhaustive, sequential$"):
        conf.method_conf({"type": "vopp", "k": 5}, "methods.x")
    pose = conf.PoseConf.from_dict({"threshold_px": [1, 2]})
    assert pose.thresholds == (1.0, 2.0) and conf.PoseConf.from_dict({"threshold_px": 1.5}).thresholds == (1.5,)
    assert pose.to_dict() == {"estimator": "opencv", "threshold_px": [1, 2], "scale_aware": False}
    train = conf.EncoderConf.from_dict({"type": "vop", "backbone": "dense_sift", "train": {"datasets": ["d"]}})
    assert isinstance(train.train, conf.TrainConf) and train.train.datasets == ("d",)


def test_a_dataset_key_of_another_source_is_named():
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["datasets"]["demo"]["model"] = "sparse"  # a colmap key on a synthetic dataset
    with pytest.raises(ConfigError, match=r"^datasets\.demo\.model: not a key of a `synthetic` dataset; did you mean "
                                          r"'mode'\?\n  allowed here: source, backbone, methods, root, .*, synthetic$"):
        load_datasets(config)


def _load_error(config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_datasets(config)
    return str(info.value).splitlines()


def test_cross_references_lead_with_the_key_and_the_fix():
    fresh = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["datasets"]["demo"]["backbone"] = "dense_sif"
    assert _load_error(config) == [
        "datasets.demo.backbone: 'dense_sif' is not under `backbones:`; did you mean 'dense_sift'?",
        "  under `backbones:` now: dense_sift, dinov2_vitl14; name one of them or add 'dense_sif' there"]
    config["datasets"]["demo"] = dict(fresh["datasets"]["demo"], methods=["vop", "vopp"])
    assert _load_error(config)[0] == "datasets.demo.methods[1]: 'vopp' is not under `methods:`; did you mean 'vop'?"
    config["datasets"]["demo"] = fresh["datasets"]["demo"]
    config["methods"]["vop"]["encoder"] = "vop_sitf"
    assert _load_error(config)[0] == ("methods.vop.encoder: 'vop_sitf' is not under `encoders:`; "
                                      "did you mean 'vop_sift'?")
    config["methods"]["vop"]["encoder"] = "vop_sift"
    config["encoders"]["vop_sift"]["train"]["datasets"] = ["demo_trian"]
    assert _load_error(config)[0] == ("encoders.vop_sift.train.datasets[0]: 'demo_trian' is not under `datasets:`; "
                                      "did you mean 'demo_train'?")
    config["encoders"]["vop_sift"]["train"]["datasets"] = ["inloc"]  # no depth maps, no poses (hence no tracks)
    error = _load_error(config)
    assert error[0] == ("encoders.vop_sift.train.datasets[0]: 'inloc' has neither depth maps nor posed images "
                        "(whose 3D points' tracks give the labels) to train from; name a posed dataset")
    assert error[1].startswith("  datasets that can train here: demo, demo_train, eth3d")
    assert "mary_rose" in error[1] and "inloc" not in error[1]
    config["encoders"]["vop_sift"]["train"]["datasets"] = ["demo_train"]
    config["datasets"]["photos"] = {"source": "folder", "root": "photos", "backbone": "dense_sift",
                                    "methods": ["cls", "oracle"]}
    assert _load_error(config) == ["datasets.photos.methods[1]: 'oracle' needs ground-truth overlap, which a `folder` "
                                   "dataset does not have; remove it from the list"]
