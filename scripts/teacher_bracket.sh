#!/usr/bin/env bash
# The teacher bracket under the shipped RGB-D model's settings (docs/EVALUATION.md, "The teacher bracket under the
# session-11 defaults"): each teacher's joint model (runs/joint_oracle, runs/joint_tiny: docs/EVALUATION.md's
# training commands) gets those settings, then the rows whose output the settings change, on the bracket's splits.
# The shift-adaptive fusion's refs (4 in-distribution scans, as the shipped model's) and the class prior of the
# label-shift correction (32 scans, as the shipped model's) are each model's own (scripts/validation_shifts.py); the
# rest (guard, mix, base share, slopes, disagreement gate, correction strength) is the shipped model's.
#   usage: bash scripts/teacher_bracket.sh        (RUNS defaults to ./runs; three jobs side by side, about 15 min)
set -e
cd "$(dirname "$0")/.."
export PYTHONPATH="$(pwd)"
PY="${PYTHON:-.venv/bin/python}"
RUNS="${RUNS:-runs}"
ADAPT="strategy=ttt_kd,steps=20,optimizer=adam,lr=1e-4,params=all,bn_train=true,guard_kd_ratio=0.55,unadapted_weight=0.3"
ADAPT="$ADAPT,prior_strength=0.4,prior_iterations=3"
FUSION="mode=geometric,weight_2d=0.35,max_disagreement=0.4,shift_slope_3d=0.75,shift_slope_2d=0.25"
for t in oracle tiny; do
  refs=$($PY scripts/validation_shifts.py --checkpoint $RUNS/joint_$t/model.safetensors --teacher $t --suite rgbd \
      --splits in_dist 2>/dev/null | tail -1 | $PY -c \
      "import json, sys; r = json.load(sys.stdin); print(f\"shift_ref_3d={r['shift_ref_3d']},shift_ref_2d={r['shift_ref_2d']}\")")
  prior=$($PY scripts/validation_shifts.py --checkpoint $RUNS/joint_$t/model.safetensors --teacher $t --suite rgbd \
      --splits in_dist --scans 32 2>/dev/null | tail -1 | $PY -c \
      "import json, sys; print(','.join(str(v) for v in json.load(sys.stdin)['source_prior']))")
  $PY scripts/set_validated_settings.py --checkpoint $RUNS/joint_$t/model.safetensors \
      --out $RUNS/joint_$t/validated11.safetensors --adapt $ADAPT --fusion "$FUSION,$refs" --class-prior "$prior" \
      --how "the shipped RGB-D model's settings with this model's own shift refs and class prior (bracket, session 11)"
done
run() {  # teacher checkpoint out [extra]
  $PY -m ttt_kd_ros.tools.evaluate --out $RUNS/bracket11_$3 --teacher "$1" --checkpoint "$2" \
      --source-only-checkpoint ttt_kd_ros/checkpoints/ttt_kd_small_synthetic_source_only.safetensors \
      --strategies source_only,fusion_only,default \
      --shift office --shift lidar --shift noisy --scans 4 --max-points 16000 --subsample crop \
      --seed 20261121 --steps 20 --lr 1e-4 --curve-scans 0 --threads 1 -q "${@:4}"
}
run oracle $RUNS/joint_oracle/validated11.safetensors oracle &
run tiny $RUNS/joint_tiny/validated11.safetensors tiny --teacher-resolution 120 160 &
run ttt_kd_ros/checkpoints/teacher_synthetic_dense ttt_kd_ros/checkpoints/ttt_kd_small_synthetic.safetensors standin &
wait
