#!/usr/bin/env bash
# One short run on a lent GPU machine (device tool): the gpu-marked tests, then the engine benchmark on CUDA for
# 120k points x 1 camera and 150k points x 6 cameras, 1/5/10/30 TTT steps, AMP off/on, the torch backend and,
# when a spconv CUDA wheel was carried along (wheels/spconv*.whl beside this repo's root), spconv too. Writes
# $OUT/gpu_tests.txt, $OUT/engine.jsonl (one JSON line per row) and $OUT/engine.md (the table for
# docs/BENCHMARKS.md). Nothing is downloaded: the machine has no network.
#   usage (device tool): bash scripts/gpu_check.sh        (OUT defaults to ./gpu_out)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee "$OUT/device.txt"
backends="torch"
if ls wheels/spconv*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-deps wheels/*.whl; then
  backends="torch spconv"
fi
"$PY" -m pytest -m gpu test -q -p no:cacheprovider 2>&1 | tail -20 | tee "$OUT/gpu_tests.txt"
for backend in $backends; do
  for amp in "" "--amp"; do
    for case in "120000 1" "150000 6"; do
      set -- $case
      "$PY" -m ttt_kd_ros.tools.benchmark_engine --device cuda --backend "$backend" $amp --points "$1" \
        --cameras "$2" --steps 1 5 10 30 --reps 5 --warmup 2 --json "$OUT/engine.jsonl" \
        >> "$OUT/engine_log.txt" 2>&1 || echo "failed: backend=$backend amp=$amp case=$case" | tee -a "$OUT/failures.txt"
    done
  done
done
"$PY" -m ttt_kd_ros.tools.benchmark_engine --table "$OUT/engine.jsonl" | tee "$OUT/engine.md"
