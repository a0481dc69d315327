"""Packaging: the jobs' conda env has pyproject's dependencies and installs this checkout; lint is clean."""

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name, where they differ
CONDA_NAMES = {"torch": "pytorch", "opencv-python-headless": "py-opencv", "matplotlib": "matplotlib-base",
               "snakemake": "snakemake-minimal"}


def split_requirement(text: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", text.strip()).groups()
    return name.lower(), spec.replace(" ", "")


@pytest.mark.parametrize("env_file, builds", [("vop.yaml", {}),
                                               ("vop-gpu.yaml", {"pytorch": "pytorch-gpu", "faiss-cpu": "faiss-gpu"})])
def test_conda_envs_list_exactly_the_package_dependencies(env_file, builds):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAMES.get(name, name): spec for name, spec in map(split_requirement, project["dependencies"])}
    wanted = {builds.get(name, name): spec for name, spec in wanted.items()}
    env = yaml.safe_load((REPO / "envs" / env_file).read_text())
    listed = dict(split_requirement(dep) for dep in env["dependencies"] if isinstance(dep, str))
    extras = {"python", "pip", "setuptools"}  # what building the editable install needs
    assert {k: v for k, v in listed.items() if k not in extras} == wanted
    deploy = REPO / "envs" / env_file.replace(".yaml", ".post-deploy.sh")
    assert deploy.read_text() == (REPO / "envs/vop.post-deploy.sh").read_text()


def test_post_deploy_script_installs_this_checkout(tmp_path):
    """What Snakemake runs in a fresh conda env: here a fresh venv whose dependencies (setuptools to build
    the editable install) come from this interpreter's site-packages."""
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    shutil.copy(REPO / "envs/vop.post-deploy.sh", tmp_path / "post-deploy.sh")
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": sysconfig.get_path("purelib")}
    proc = subprocess.run(["bash", str(tmp_path / "post-deploy.sh")], cwd=REPO, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dist] = (env_dir / "lib").glob("python3*/site-packages/vop_pipeline-*.dist-info")
    direct_url = json.loads((dist / "direct_url.json").read_text())
    assert direct_url == {"url": REPO.as_uri(), "dir_info": {"editable": True}}
    wrong = subprocess.run(["bash", str(tmp_path / "post-deploy.sh")], cwd=tmp_path, capture_output=True, text=True,
                           env=env)
    assert wrong.returncode == 1 and "is not the vop-pipeline checkout; run snakemake from the clone" in wrong.stderr


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None,
                    reason="ruff is in the test extra: pip install -e '.[test]'")
def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    proc = subprocess.run([ruff, "check", "src", "scripts", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_snakemake_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "Congratulations, your workflow is in a good condition" in proc.stderr, \
        (proc.stdout + proc.stderr)[-4000:]
