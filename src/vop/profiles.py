"""Snakemake profiles of this checkout (profiles/<name>) installed where `snakemake --profile <name>` looks.

Snakemake resolves a profile name in the working directory, then in the user's and the system's
configuration folders (platformdirs: ~/.config/snakemake, /etc/xdg/snakemake), never in the workflow's
profiles/ folder. Installing copies the profile there, with the lines marked `# EDIT` (the cluster's
partition and account) filled in when they are given, so that the user's copy is theirs to change.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
# the profile lines a user must set, by the option that sets them
EDIT_KEYS = {"partition": "slurm_partition", "account": "slurm_account"}


def user_profile_dir() -> Path:
    """Where `snakemake --profile NAME` looks for NAME after the working directory."""
    from snakemake.common import get_appdirs

    return Path(get_appdirs().user_config_dir)


def fill_edit_lines(text: str, values: dict[str, str | None]) -> tuple[str, list[str]]:
    """The profile text with its `# EDIT` lines set from `values` (by EDIT_KEYS); and the EDIT lines left."""
    lines, left = [], []
    for line in text.splitlines(keepends=True):
        key = re.match(r"\s*(\w+):", line)
        option = next((o for o, k in EDIT_KEYS.items() if key and key.group(1) == k), None)
        if "# EDIT" in line and option is not None and values.get(option) is not None:
            indent = line[:len(line) - len(line.lstrip())]
            line = f"{indent}{EDIT_KEYS[option]}: {values[option]!r}   # set by `vop install-profile --{option}`\n"
        elif "# EDIT" in line:
            left.append(line.strip())
        lines.append(line)
    return "".join(lines), left


def install_profile(name: str = "slurm", partition: str | None = None, account: str | None = None,
                    force: bool = False, target_root: Path | None = None) -> tuple[Path, list[str]]:
    """Copy profiles/<name> into the user's Snakemake profile folder; returns it and the EDIT lines left."""
    source = PROFILES / name
    if not (source / "config.yaml").is_file():
        known = sorted(p.name for p in PROFILES.iterdir() if (p / "config.yaml").is_file()) if PROFILES.is_dir() else []
        raise SystemExit(f"{source}: no such profile (this checkout has {known or 'none'}; is the package "
                         "installed from a clone? `pip install -e .` there)")
    target = (target_root or user_profile_dir()) / name
    if target.exists() or target.is_symlink():
        if not force:
            raise SystemExit(f"{target} exists; rerun with --force to replace it with {source}")
        target.unlink() if target.is_symlink() or target.is_file() else shutil.rmtree(target)
    text, left = fill_edit_lines((source / "config.yaml").read_text(), {"partition": partition, "account": account})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    (tmp / "config.yaml").write_text(text)
    tmp.rename(target)
    return target, left
