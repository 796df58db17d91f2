#!/usr/bin/env bash
# One install step for both README commands: a local .venv with torch (kept if
# already present, e.g. a robot's CUDA build; otherwise the CPU wheel), the
# ros-jazzy-* wheels, the Python dependencies and this package (pip install .,
# so share/ttt_kd_ros/{launch,config} exist). Idempotent: a stamp of the inputs
# makes a second run return in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TTT_KD_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }

stamp="$VENV/.ttt_kd_ros_install_stamp"
want=$( { cat requirements.txt setup.py setup.cfg package.xml scripts/install.sh
         find ttt_kd_ros launch config resource -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 cat; } \
       2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import ttt_kd_ros" 2>/dev/null; then
  exit 0
fi

if ! "$VPY" -c "import torch" 2>/dev/null; then
  # A bare `torch` would pull a multi-GB CUDA build; pin the local CPU wheel.
  pip_install "torch==2.13.0"
fi
# The floor (README, "torch"): autocast queries by device type and bfloat16 autocast on a CPU need torch 2.4.
if ! "$VPY" -c "import sys, torch; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))"; then
  echo "install.sh: torch $("$VPY" -c 'import torch; print(torch.__version__)') is older than 2.4, the floor of" \
       "ttt_kd_ros; install a newer build (on Jetson: JetPack 6.1 or later, see README)" >&2
  exit 1
fi
pip_install -r requirements.txt
pip_install --no-deps --force-reinstall .
echo "$want" > "$stamp"
