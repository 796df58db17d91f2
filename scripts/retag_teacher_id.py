"""Record a teacher's current id in checkpoints trained against it, weights untouched.

Why: teacher ids used to name a folder (``dense-cnn:teacher_synthetic_dense:...``); they now carry a digest of
the weights (teachers/weights.py ``weights_digest``). A checkpoint trained against the same weights keeps every
tensor; only its ``teacher_id`` field is rewritten, after checking that the old id names the same folder, so
the node does not warn about a teacher it was in fact trained with.

    PYTHONPATH=. .venv/bin/python scripts/retag_teacher_id.py --teacher builtin CHECKPOINT...
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ttt_kd_ros.teachers.resolve import resolve


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher spec the checkpoints were trained against")
    p.add_argument("--was", required=True, help="the old teacher id the checkpoints must carry")
    p.add_argument("checkpoints", nargs="+", type=Path)
    args = p.parse_args()
    new_id = resolve(args.teacher).teacher_id
    for path in args.checkpoints:
        meta = read_checkpoint_metadata(path)
        if meta["teacher_id"] == new_id:
            print(f"{path}: already {new_id}")
            continue
        if meta["teacher_id"] != args.was:
            raise SystemExit(f"{path}: teacher id {meta['teacher_id']!r}, not {args.was!r}: not retagged")
        model = load_checkpoint(path, "cpu")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.config = dataclasses.replace(model.config, teacher_id=new_id)
        save_checkpoint(model, path, extra=meta["extra"], validated=meta.get("validated") or None)
        after = load_checkpoint(path, "cpu").state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{path}: tensors changed"
        print(f"{path}: {meta['teacher_id']} -> {new_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
