#!/usr/bin/env bash
# Opt-in: MinkowskiEngine 0.5.4 (the paper's sparse backbone) built for the CPU into .venv, so the minkowski
# backend and its parity tests run here. `.ci/run` always runs it; users run it when they want that backend
# (on a CUDA robot, build MinkowskiEngine for CUDA by its own instructions instead).
# Idempotent: returns at once when the venv imports it; the built wheel is cached per torch and Python version
# under ${XDG_CACHE_HOME:-~/.cache}/ttt_kd_ros, so a fresh clone on the same machine installs it in seconds.
# A first build takes 5-9 min on 2 cores (OpenBLAS, no CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TTT_KD_VENV:-.venv}"
VPY="$(pwd)/$VENV/bin/python"
if "$VPY" -c "import MinkowskiEngine" 2>/dev/null; then
  exit 0
fi
pip_() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }
tag=$("$VPY" -c 'import sys, torch; print(f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}")')
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ttt_kd_ros/minkowski-$tag"
if ! ls "$cache"/*.whl >/dev/null 2>&1; then
  if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq libopenblas-dev
  fi
  pip_ install ninja
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  pip_ download --no-deps --no-build-isolation --no-binary :all: -d "$work" MinkowskiEngine==0.5.4
  tar xzf "$work"/MinkowskiEngine-0.5.4.tar.gz -C "$work"
  src="$work/MinkowskiEngine-0.5.4"
  # Python 3.10 removed collections.Sequence; the package still imports it in five files.
  grep -rl "from collections import Sequence" "$src" | xargs -r sed -i \
    -e 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
    -e 's/^from collections import Sequence$/from collections.abc import Sequence/'
  mkdir -p "$cache"
  (cd "$src" && MAX_JOBS=2 "$VPY" -m pip --disable-pip-version-check -q wheel --no-build-isolation --no-deps \
    -w "$cache" . --config-settings=--global-option=--cpu_only --config-settings=--global-option=--blas=openblas)
fi
pip_ install --no-deps "$cache"/*.whl  # pip names it minkowskiengine-0.5.4-*.whl
"$VPY" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'installed')"
