"""ttt_kd_fit_fusion_head: fit rho_F, the linear head on teacher features that fusion reads, into a checkpoint.

Joint training fits it at its end (tools/train.py); this tool adds it to a checkpoint trained before the head
existed, or refits it on other labelled scans, without touching the 3D network:

    ttt_kd_fit_fusion_head --checkpoint ttt_kd_ros/checkpoints/ttt_kd_small_synthetic.safetensors \\
        --data 'synthetic:source?scans=48&seed=0' --out runs/with_head.safetensors

The scans must be labelled source scans (the training data, never evaluation scans): the head is part of the
trained model. The teacher is the one the checkpoint distils (default: the shipped stand-in).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.fusion import fit_fusion_head, head_examples
from ttt_kd_ros.model import TTTKDNet
from ttt_kd_ros.segmenter import resolve_builtin
from ttt_kd_ros.teachers.resolve import resolve
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.training.examples import training_scan_at

LOG = logging.getLogger("ttt_kd_fit_fusion_head")


def with_fusion_head(model: TTTKDNet, head: torch.nn.Linear) -> TTTKDNet:
    """A copy of ``model`` whose config says it carries rho_F, with ``head``'s weights in it."""
    config = dataclasses.replace(model.config, fusion_head=True)
    out = TTTKDNet(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fusion_head.")}
    state.update({f"fusion_head.{k}": v for k, v in head.state_dict().items()})
    out.load_state_dict(state, strict=True)
    return out.eval()


def fit_on_source(model: TTTKDNet, dataset: Sequence, teacher: Teacher, points_per_scan: int, seed: int
                  ) -> tuple[torch.nn.Linear, dict]:
    """rho_F fitted on the visible labelled points of ``dataset``; the head and a report of the fit."""
    rng = np.random.default_rng(seed)
    features, labels, skipped = [], [], 0
    for i in range(len(dataset)):
        try:
            scan = training_scan_at(dataset, i, model.config.label_set)
        except ValueError as err:
            LOG.warning("skipped: %s", err)
            skipped += 1
            continue
        f, y = head_examples(scan, teacher, model.config.kd_target_center, points_per_scan, rng)
        features.append(f)
        labels.append(y)
    if not features or sum(len(y) for y in labels) == 0:
        raise ValueError("no labelled point is seen by a camera in the given scans: the head cannot be fitted "
                         "(a data source with images and labels is needed)")
    x, y = torch.cat(features), torch.cat(labels)
    head = fit_fusion_head(x, y, model.config.num_classes, seed=seed)
    with torch.no_grad():
        accuracy = float((head(x).argmax(dim=1) == y).float().mean())
    return head, {"points": len(y), "scans": len(features), "skipped_scans": skipped,
                  "train_accuracy": round(accuracy, 4), "teacher_id": teacher.teacher_id}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttt_kd_fit_fusion_head", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file (or builtin / builtin:lidar)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (may be the input)")
    p.add_argument("--data", required=True, help="labelled source scans with cameras (a data-source spec)")
    p.add_argument("--teacher", default="builtin", help="the checkpoint's teacher (default: the shipped stand-in)")
    p.add_argument("--points-per-scan", type=int, default=4000, help="visible points sampled per scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = resolve_builtin(args.checkpoint)
        meta = read_checkpoint_metadata(checkpoint)
        model = load_checkpoint(checkpoint, "cpu")
        teacher = resolve(args.teacher, model.config.teacher_resolution, torch.device("cpu"))
        if teacher.feature_dim != model.config.teacher_dim:
            raise ValueError(f"--teacher {args.teacher}: {teacher.feature_dim}-dim features, the checkpoint's kd head "
                             f"outputs {model.config.teacher_dim}")
        dataset = open_source(args.data)
    except ValueError as err:
        parser.error(str(err))
    start = time.perf_counter()
    head, report = fit_on_source(model, dataset, teacher, args.points_per_scan, args.seed)
    report.update(data=args.data, seconds=round(time.perf_counter() - start, 1),
                  command="ttt_kd_fit_fusion_head " + " ".join(shlex.quote(a) for a in argv))
    extra = {**meta.get("extra", {}), "fusion_head": report}
    save_checkpoint(with_fusion_head(model, head), args.out, extra=extra, validated=meta.get("validated") or None)
    LOG.info("fusion head fitted on %d points of %d scans (train accuracy %.3f) -> %s", report["points"],
             report["scans"], report["train_accuracy"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
