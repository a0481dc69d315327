"""`vop install-profile`: profiles/<name> copied where `snakemake --profile <name>` looks, EDIT lines filled."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vop.profiles import PROFILES, install_profile

REPO = Path(__file__).resolve().parents[1]


def test_the_profile_is_copied_with_its_edit_lines_filled(tmp_path):
    target, left = install_profile("slurm", partition="gpu", account="", target_root=tmp_path)
    assert target == tmp_path / "slurm" and left == []
    installed = yaml.safe_load((target / "config.yaml").read_text())
    shipped = yaml.safe_load((PROFILES / "slurm/config.yaml").read_text())
    assert installed["default-resources"]["slurm_partition"] == "gpu"
    assert installed["default-resources"]["slurm_account"] == ""
    # nothing else changed
    for key in ("slurm_partition", "slurm_account"):
        installed["default-resources"].pop(key), shipped["default-resources"].pop(key)
    assert installed == shipped
    with pytest.raises(SystemExit, match="exists; rerun with --force"):
        install_profile("slurm", target_root=tmp_path)
    target, left = install_profile("slurm", partition="short", force=True, target_root=tmp_path)
    assert [line.split(":")[0] for line in left] == ["slurm_account"]  # the one not given stays to edit
    assert yaml.safe_load((target / "config.yaml").read_text())["default-resources"]["slurm_partition"] == "short"
    with pytest.raises(SystemExit, match=r"profiles/nonesuch: no such profile \(this checkout has \[.*'slurm'"):
        install_profile("nonesuch", target_root=tmp_path)


def test_snakemake_finds_the_installed_profile_by_name(tmp_path):
    # the folder is snakemake's own choice (its platformdirs), under the user's HOME
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(tmp_path)}
    vop = Path(sys.executable).with_name("vop")
    out = subprocess.run([str(vop), "install-profile", "slurm", "--partition", "x", "--account", "y"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert f"installed {tmp_path}/.config/snakemake/slurm" in out
    (tmp_path / "work/config").mkdir(parents=True)
    (tmp_path / "work/config/config.yaml").write_text((REPO / "config/config.yaml").read_text())
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile", "slurm",
                          "--list-rules"], cwd=tmp_path / "work", env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Using profiles slurm and workflow specific profile" in run.stderr and "features_shard" in run.stdout
