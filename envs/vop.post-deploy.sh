#!/usr/bin/env bash
# Runs inside the new conda env once Snakemake has created it, in the working directory of the run: installs
# this checkout's package there (editable; its dependencies are the env's), so jobs under
# `--software-deployment-method conda` import the same code as a local run.
set -euo pipefail
source="${VOP_SOURCE:-$PWD}"
if [ ! -f "$source/pyproject.toml" ] || ! grep -q '^name = "vop-pipeline"' "$source/pyproject.toml"; then
    echo "envs/vop.post-deploy.sh: $source is not the vop-pipeline checkout; run snakemake from the clone," \
         "or set VOP_SOURCE to it" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e "$source"
