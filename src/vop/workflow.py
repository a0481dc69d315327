"""What the Snakefile asks the package at start: the datasets of the config and the checks across blocks.

The JSON schema (workflow/schemas/config.schema.yaml) checks every block on its own; here are the
references between blocks it cannot express (a dataset's backbone must be configured, an oracle needs
ground-truth overlap, ...), each with the key to fix. Imports stay light: it runs on every Snakemake start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vop.conf import ConfigError, EncoderConf, did_you_mean, fields_of, key_path, listing, method_conf
from vop.datasets import Dataset


def load_datasets(config: Mapping[str, Any]) -> dict[str, Dataset]:
    """Every `datasets:` entry with its source; raises ConfigError on an entry that cannot work."""
    datasets = {name: Dataset(name, entry) for name, entry in config["datasets"].items()}
    check_config(config, datasets)
    return datasets


def _not_configured(path: tuple, name: str, block: str, configured) -> ConfigError:
    """'<path>: 'x' is not under `block:`; did you mean ...?', the configured names on the next line."""
    return ConfigError(f"{key_path(path)}: {name!r} is not under `{block}:`{did_you_mean(name, configured)}\n"
                       f"  under `{block}:` now: {listing(configured) or 'nothing'}; name one of them or add "
                       f"{name!r} there", path)


def check_config(config: Mapping[str, Any], datasets: Mapping[str, Dataset]) -> None:
    """The cross-references of the config; each message leads with the key path and the fix."""
    backbones, methods, encoders = config["backbones"], config["methods"], config["encoders"]
    confs = {name: method_conf(entry, f"methods.{name}") for name, entry in methods.items()}
    for name, dataset in datasets.items():
        where = ("datasets", name)
        if dataset.conf.backbone not in backbones:
            raise _not_configured((*where, "backbone"), dataset.conf.backbone, "backbones", backbones)
        for i, method in enumerate(dataset.conf.methods):
            if method not in confs:
                raise _not_configured((*where, "methods", i), method, "methods", confs)
            first = getattr(confs[method], "first_stage", None)  # verify: its first stage runs here too
            for needs_overlap in (method, first) if first in confs else (method,):
                if confs[needs_overlap].needs == "overlap" and not dataset.has_ground_truth:
                    extra = " without `gt_pairs`" if "gt_pairs" in fields_of(dataset.reader.Options) else ""
                    raise ConfigError(f"{key_path((*where, 'methods', i))}: {method!r} needs ground-truth overlap, "
                                      f"which a `{dataset.conf.source}` dataset{extra} does not have; remove it from "
                                      "the list", (*where, "methods", i))
    for name, conf in confs.items():
        first = getattr(conf, "first_stage", None)
        if first is not None and (first not in confs or confs[first].type == "verify"):
            why = "is not under `methods:`" if first not in confs else "is a verify method itself"
            raise ConfigError(f"config: methods.{name}.first_stage {first!r} {why}; name a method such as cls or vop")
        encoder = getattr(conf, "encoder", None)
        if encoder is not None and encoder not in encoders:
            raise _not_configured(("methods", name, "encoder"), encoder, "encoders", encoders)
    for name, entry in encoders.items():
        where = ("encoders", name)
        conf = EncoderConf.from_dict(entry, f"encoders.{name}")
        if conf.backbone is not None and conf.backbone not in backbones:
            raise _not_configured((*where, "backbone"), conf.backbone, "backbones", backbones)
        for i, ds in enumerate(conf.train.datasets if conf.train else ()):
            if ds not in datasets:
                raise _not_configured((*where, "train", "datasets", i), ds, "datasets", datasets)
            if not (datasets[ds].has_depth or datasets[ds].has_poses):
                usable = sorted(d for d, entry in datasets.items() if entry.has_depth or entry.has_poses)
                raise ConfigError(f"{key_path((*where, 'train', 'datasets', i))}: {ds!r} has neither depth maps nor "
                                  "posed images (whose 3D points' tracks give the labels) to train from; name a posed "
                                  f"dataset\n  datasets that can train here: {listing(usable) or 'none'}",
                                  (*where, "train", "datasets", i))
