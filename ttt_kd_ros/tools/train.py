"""ttt_kd_train: joint training (CE + lambda * KD) or the source-only baseline on synthetic scans.

Single process:   ttt_kd_train --domain source --scans 64 --epochs 6 --out runs/joint
Several GPUs/CPUs: torchrun --nproc_per_node 2 -m ttt_kd_ros.tools.train ... (DDP; rank 0 writes)

--teacher: "default" (the shipped stand-in teacher, ttt_kd_ros/checkpoints/teacher_synthetic_vit),
"tiny" (random weights: the control), or any load_teacher spec (a DINOv2 HF folder, an official
.pth, a cached hub id). docs/TRAINING.md has the commands behind the shipped checkpoints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from ttt_kd_ros.checkpoints import default_teacher, default_teacher_resolution
from ttt_kd_ros.data.synthetic import DOMAINS, SyntheticDataset
from ttt_kd_ros.losses import KD_LOSS_KINDS
from ttt_kd_ros.model import PRESETS
from ttt_kd_ros.oracle_teacher import build_offline_teacher, is_oracle
from ttt_kd_ros.segmenter import RANDOM_TEACHERS
from ttt_kd_ros.teacher import Teacher
from ttt_kd_ros.training import Augmentation, TrainConfig, build_model, init_distributed, train

VAL_SEED_OFFSET = 7919
"""Validation scans come from data seed (seed + this): rooms the training scans do not show."""


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    a = Augmentation()
    p = argparse.ArgumentParser(prog="ttt_kd_train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="run folder: model.safetensors, last.*, history.jsonl")
    p.add_argument("--domain", default=d.domain, choices=sorted(DOMAINS), help="synthetic domain to train on")
    p.add_argument("--scans", type=int, default=64, help="training scans (SyntheticDataset(domain, scans, seed))")
    p.add_argument("--val-scans", type=int, default=8, help="held-out scans for a per-epoch mIoU (0 = none)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lambda-kd", type=float, default=d.lambda_kd, help="weight of the KD term")
    p.add_argument("--kd-loss", default=d.kd_loss, choices=KD_LOSS_KINDS)
    p.add_argument("--kd-points", type=int, default=d.kd_points, help="cached KD targets per scan (0 = all)")
    p.add_argument("--source-only", action="store_true", help="CE only: the source-only baseline")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--teacher", default="default",
                   help=f"'default' (stand-in ViT), {sorted(RANDOM_TEACHERS)} (random lower bound), "
                        "'oracle[:corrupt=0.5,dim=96]' (class-vector upper bound, synthetic scans only) or a "
                        "load_teacher spec")
    p.add_argument("--teacher-resolution", type=int, nargs="+", default=None,
                   help="short side or H W fed to the teacher (default: the stand-in's native (120, 160), else 224)")
    p.add_argument("--batch-scans", type=int, default=d.batch_scans, help="scans per optimiser step (per rank)")
    p.add_argument("--crop-points", type=int, default=16000, help="train on crops of this many points (0 = whole)")
    p.add_argument("--no-augment", action="store_true", help="no rotation / scaling / flip / jitter / crop")
    p.add_argument("--scale", type=float, nargs=2, default=a.scale)
    p.add_argument("--jitter-m", type=float, default=a.jitter_m)
    p.add_argument("--flip-prob", type=float, default=a.flip_prob)
    p.add_argument("--seed", type=int, default=d.seed, help="data seed, model init and augmentation streams")
    p.add_argument("--resume", type=Path, default=None, help="a previous --out folder: continue after its last epoch")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop once this epoch (0-based) is saved; continue later with --resume")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def resolve_teacher(spec: str, resolution: list[int] | None, device: torch.device, seed: int) -> Teacher:
    """'default' -> the shipped stand-in folder at its native resolution; the oracle control at the same
    resolution; anything else as the Segmenter does."""
    if spec == "default":
        spec = str(default_teacher())
        res: int | tuple[int, int] = default_teacher_resolution()
    elif is_oracle(spec):
        res = default_teacher_resolution()
    else:
        res = 224
    if resolution:
        if len(resolution) not in (1, 2):
            raise ValueError(f"--teacher-resolution: expected a short side or H W, got {resolution}")
        res = resolution[0] if len(resolution) == 1 else (resolution[0], resolution[1])
    return build_offline_teacher(spec, res, device, seed=seed)


def teacher_input_hw(teacher: Teacher, example_image_wh: tuple[int, int]) -> tuple[int, int]:
    """(H, W) the teacher sees for this data's images: what NetConfig.teacher_resolution records."""
    w_in, h_in = teacher.input_size(*example_image_wh)
    return h_in, w_in


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = shlex.join(["ttt_kd_train", *(sys.argv[1:] if argv is None else argv)])
    ctx = init_distributed(args.device)
    augment = None if args.no_augment else Augmentation(scale=tuple(args.scale), flip_prob=args.flip_prob,
                                                        jitter_m=args.jitter_m, crop_points=args.crop_points)
    config = TrainConfig(domain=args.domain, preset=args.preset, epochs=args.epochs, lr=args.lr,
                         weight_decay=args.weight_decay, lambda_kd=args.lambda_kd, kd_loss=args.kd_loss,
                         source_only=args.source_only, batch_scans=args.batch_scans, kd_points=args.kd_points,
                         seed=args.seed, augment=augment)
    teacher = resolve_teacher(args.teacher, args.teacher_resolution, ctx.device, args.seed)
    dataset = SyntheticDataset(args.domain, args.scans, seed=args.seed)
    first = dataset[0]
    image_wh = ((first.cameras[0].intrinsics.width_px, first.cameras[0].intrinsics.height_px)
                if first.cameras else (224, 224))
    model = build_model(config, teacher.feature_dim, teacher.teacher_id, teacher_input_hw(teacher, image_wh))
    val = list(SyntheticDataset(args.domain, args.val_scans, seed=args.seed + VAL_SEED_OFFSET)) if ctx.is_main else []
    metadata = {"command": command, "teacher_id": teacher.teacher_id, "teacher_spec": args.teacher,
                "domain": args.domain, "seed": args.seed, "data_seed": args.seed,
                "val_data_seed": args.seed + VAL_SEED_OFFSET, "torch": torch.__version__}
    result = train(config, model, dataset, teacher, args.out, ctx, resume=args.resume, val_scans=val,
                   metadata=metadata, progress=ctx.is_main and not args.no_progress,
                   stop_after_epoch=args.stop_after_epoch)
    if ctx.is_main:
        print(json.dumps(result.history[-1] if result.history else {}, indent=1))
        print(f"model written to {result.final_checkpoint}" if result.final_checkpoint else
              f"stopped after epoch {args.stop_after_epoch}; continue with --resume {args.out}")
    if ctx.distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
