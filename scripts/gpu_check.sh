#!/usr/bin/env bash
# One short run on a lent GPU machine (device tool), under 8 minutes in all:
#  1. the device-parametrised tests (`pytest -m gpu`: the engine, segmenter, adaptation, model and training tests
#     on CUDA, mixed precision off and on), 3.5 minutes at most;
#  2. whole Segmenter.segment calls timed end to end with the device synchronised (scripts/segment_timing.py):
#     120k points + 1 camera and 150k + 6 cameras, 1 / 5 / 10 TTT-KD steps, mixed precision off and on, every
#     sparse backend importable (spconv when a CUDA wheel was carried along: wheels/spconv*.whl), 3 minutes;
#  3. the profiler's CUDA kernel count per adaptation step, pairs against table (tools/benchmark_sparse
#     --count-kernels), and the per-path step time at 16k and 120k points, 1.5 minutes.
# Writes $OUT/device.txt, gpu_tests.txt, segment.jsonl + segment.md, kernels.txt. Nothing is downloaded.
#   usage (device tool): bash scripts/gpu_check.sh        (OUT defaults to ./gpu_out)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0),
'bf16', torch.cuda.is_bf16_supported())" | tee "$OUT/device.txt"
if ls wheels/spconv*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-deps wheels/*.whl || echo "spconv wheel did not install" | tee -a "$OUT/failures.txt"
fi
timeout 210 "$PY" -m pytest -m gpu test -q -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
timeout 180 "$PY" scripts/segment_timing.py --device cuda --reps 5 --warmup 2 --json "$OUT/segment.jsonl" \
  > "$OUT/segment.md" 2>&1 || echo "segment timing stopped (timeout or error)" | tee -a "$OUT/failures.txt"
tail -30 "$OUT/segment.md"
timeout 90 "$PY" -m ttt_kd_ros.tools.benchmark_sparse --device cuda --scan room --points 16000 120000 --reps 5 \
  --checkpoint ttt_kd_ros/checkpoints/ttt_kd_small_synthetic.safetensors --conv-path pairs table --count-kernels \
  2>&1 | tail -40 | tee "$OUT/kernels.txt" || echo "kernel count stopped (timeout or error)" | tee -a "$OUT/failures.txt"
