"""What the Snakefile asks the package at start: the datasets of the config and the checks across blocks.

The JSON schema (workflow/schemas/config.schema.yaml) checks every block on its own; here are the
references between blocks it cannot express (a dataset's backbone must be configured, an oracle needs
ground-truth overlap, ...), each with the key to fix. Imports stay light: it runs on every Snakemake start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vop.conf import ConfigError, EncoderConf, method_conf
from vop.datasets import Dataset


def load_datasets(config: Mapping[str, Any]) -> dict[str, Dataset]:
    """Every `datasets:` entry with its source; raises ConfigError on an entry that cannot work."""
    datasets = {name: Dataset(name, entry) for name, entry in config["datasets"].items()}
    check_config(config, datasets)
    return datasets


def check_config(config: Mapping[str, Any], datasets: Mapping[str, Dataset]) -> None:
    """The cross-references of the config, with the fix in the message."""
    backbones, methods, encoders = config["backbones"], config["methods"], config["encoders"]
    confs = {name: method_conf(entry, f"methods.{name}") for name, entry in methods.items()}
    for name, dataset in datasets.items():
        where = f"config: datasets.{name}"
        if dataset.conf.backbone not in backbones:
            raise ConfigError(f"{where}.backbone {dataset.conf.backbone!r} is not under `backbones:`; add it there")
        for method in dataset.conf.methods:
            if method not in confs:
                raise ConfigError(f"{where}.methods names {method!r}, which is not under `methods:`")
            first = getattr(confs[method], "first_stage", None)  # verify: its first stage runs here too
            for needs_overlap in (method, first) if first in confs else (method,):
                if confs[needs_overlap].needs == "overlap" and not dataset.has_poses:
                    raise ConfigError(f"{where}.methods: {method!r} needs ground-truth overlap, which a "
                                      f"`{dataset.conf.source}` dataset does not have; remove it")
    for name, conf in confs.items():
        first = getattr(conf, "first_stage", None)
        if first is not None and (first not in confs or confs[first].type == "verify"):
            why = "is not under `methods:`" if first not in confs else "is a verify method itself"
            raise ConfigError(f"config: methods.{name}.first_stage {first!r} {why}; name a method such as cls or vop")
        encoder = getattr(conf, "encoder", None)
        if encoder is not None and encoder not in encoders:
            raise ConfigError(f"config: methods.{name}.encoder {encoder!r} is not under `encoders:`")
    for name, entry in encoders.items():
        where = f"config: encoders.{name}"
        conf = EncoderConf.from_dict(entry, f"encoders.{name}")
        if conf.backbone is not None and conf.backbone not in backbones:
            raise ConfigError(f"{where}.backbone {conf.backbone!r} is not under `backbones:`; add it there")
        for ds in conf.train.datasets if conf.train else ():
            if ds not in datasets:
                raise ConfigError(f"{where}.train.datasets names {ds!r}, which is not under `datasets:`")
            if not datasets[ds].has_depth:
                with_depth = sorted({d.conf.source for d in datasets.values() if d.has_depth})
                raise ConfigError(f"{where}.train.datasets: {ds!r} has no depth maps to train from "
                                  f"(sources with depth here: {', '.join(with_depth) or 'none'})")
