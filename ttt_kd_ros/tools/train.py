"""ttt_kd_train: joint training (CE + lambda * KD) or the source-only baseline on any data source.

Synthetic (the default):  ttt_kd_train --domain source --scans 64 --epochs 6 --out runs/joint
A real data set:          ttt_kd_train --data 'semantickitti:/data/skitti?sequences=00-07,09-10' \
                              --val 'semantickitti:/data/skitti?sequences=08&every=10' --teacher /models/dinov2-small \
                              --cache /data/cache/skitti_dinov2s --workers 4 --out runs/skitti
Several GPUs / nodes:     torchrun --nproc_per_node 8 -m ttt_kd_ros.tools.train ... (DDP; rank 0 writes)

--data takes a data-source spec (data/sources.py, docs/DATA.md); --domain / --scans / --seed are the synthetic
default's shorthand (``synthetic:DOMAIN?scans=N&seed=S``).

--teacher: "default" (the shipped stand-in teacher, ttt_kd_ros/checkpoints/teacher_synthetic_dense),
"tiny" (random weights: the control), or any teachers.resolve spec (a DINOv2 HF folder, an official
.pth, a cached hub id). docs/TRAINING.md has the commands behind the shipped checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import torch

from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ttt_kd_ros.data.sources import DataSource, SubsetSource, SyntheticSource, open_source, synthetic_world
from ttt_kd_ros.data.synthetic import DOMAINS
from ttt_kd_ros.labels import LABEL_SETS
from ttt_kd_ros.losses import KD_LOSS_KINDS
from ttt_kd_ros.model import PRESETS
from ttt_kd_ros.segmenter import resolve_builtin
from ttt_kd_ros.teachers.resolve import RANDOM_TEACHERS, resolution_from_flag, resolve
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.training.loop import Augmentation, TrainConfig, build_model, init_distributed, train

LOG = logging.getLogger("ttt_kd_train")

VAL_SEED_OFFSET = 7919
"""Validation scans come from data seed (seed + this): rooms the training scans do not show."""


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    a = Augmentation()
    p = argparse.ArgumentParser(prog="ttt_kd_train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="run folder: model.safetensors, last.*, history.jsonl, curves.png, train.log")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="training data source, e.g. 'semantickitti:ROOT?sequences=00-07' (default: synthetic "
                        "--domain with --scans and --seed)")
    p.add_argument("--val", default=None, metavar="SPEC",
                   help="validation source for a per-epoch mIoU (its first --val-scans scans; default: synthetic "
                        "--domain rooms the training scans do not show, only when --data is synthetic)")
    p.add_argument("--domain", default="source", choices=sorted(DOMAINS), help="synthetic domain to train on")
    p.add_argument("--scans", type=int, default=64, help="synthetic training scans (--data synthetic:...?scans=)")
    p.add_argument("--val-scans", type=int, default=8, help="validation scans for a per-epoch mIoU (0 = none)")
    p.add_argument("--label-set", default=None, choices=sorted(LABEL_SETS),
                   help="the model's classes (default: the data source's); other sets map through labels.py")
    p.add_argument("--cache", type=Path, default=None,
                   help="teacher feature cache folder (default OUT/feature_cache); share one per data set and "
                        "teacher between runs (ttt_kd_cache_features fills it ahead)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes per rank")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on with CUDA, off on a CPU)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lambda-kd", type=float, default=d.lambda_kd, help="weight of the KD term")
    p.add_argument("--kd-loss", default=d.kd_loss, choices=KD_LOSS_KINDS)
    p.add_argument("--kd-points", type=int, default=d.kd_points, help="cached KD targets per scan (0 = all)")
    p.add_argument("--source-only", action="store_true", help="CE only: the source-only baseline")
    p.add_argument("--fusion-head-scans", type=int, default=64,
                   help="joint training: training scans (spread over the set) rho_F, the fusion head on teacher "
                        "features, is fitted on after the network (0: no head)")
    p.add_argument("--preset", default=d.preset, choices=sorted(PRESETS))
    p.add_argument("--teacher", default="default",
                   help=f"'default' or 'builtin' (the shipped dense stand-in, NOT DINOv2), {sorted(RANDOM_TEACHERS)} "
                        "(random lower bound), "
                        "'oracle[:corrupt=0.5,dim=96]' (class-vector upper bound, synthetic scans only) or a "
                        "teachers.resolve spec (a dense stand-in or DINOv2 folder, a cached hub id, an official .pth)")
    p.add_argument("--teacher-resolution", type=int, nargs="+", default=None,
                   help="short side or H W fed to the teacher (default: the stand-in's native (120, 160), else 224)")
    p.add_argument("--batch-scans", type=int, default=d.batch_scans, help="scans per optimiser step (per rank)")
    p.add_argument("--crop-points", type=int, default=16000, help="train on crops of this many points (0 = whole)")
    p.add_argument("--crop-on-targets", type=float, default=a.crop_on_targets,
                   help="share of crops centred on a point a camera sees (keeps the KD term alive on rigs whose "
                        "cameras see part of the sweep)")
    p.add_argument("--no-augment", action="store_true", help="no rotation / scaling / flip / jitter / crop")
    p.add_argument("--scale", type=float, nargs=2, default=a.scale)
    p.add_argument("--jitter-m", type=float, default=a.jitter_m)
    p.add_argument("--flip-prob", type=float, default=a.flip_prob)
    p.add_argument("--seed", type=int, default=d.seed, help="data seed, model init and augmentation streams")
    p.add_argument("--resume", type=Path, default=None, help="a previous --out folder: continue after its last epoch")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning, e.g. a public data set's model on your "
                        "recordings): its network, label set, teacher and target centre are kept; builtin / "
                        "builtin:lidar name the shipped models (trained with the 64-dim stand-in teacher: give "
                        "--teacher builtin)")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop once this epoch (0-based) is saved; continue later with --resume")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    command = shlex.join(["ttt_kd_train", *(sys.argv[1:] if argv is None else argv)])
    try:
        ctx = init_distributed(args.device)
    except ValueError as err:
        parser.error(str(err))
    setup_logging(args.out if ctx.is_main else None, quiet=not ctx.is_main)
    try:
        data, val = open_data(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    label_set = args.label_set or data.label_set
    if args.init is not None:
        try:
            args.init = resolve_builtin(args.init)  # builtin / builtin:lidar, as the node names the shipped models
        except ValueError as err:
            parser.error(f"--init: {err}")
    if args.init is not None and args.label_set is None:
        try:
            label_set = read_checkpoint_metadata(args.init)["config"].get("label_set", "") or label_set
        except (ValueError, FileNotFoundError) as err:
            parser.error(f"--init: {err}")
    if not label_set:
        parser.error(f"--data {data.spec}: the source has no labels; training needs a labelled source")
    problem = trainable(data, val, label_set, "--init" if args.init is not None and args.label_set is None
                        else "--label-set", args.source_only)
    if problem:
        parser.error(problem)
    augment = None if args.no_augment else Augmentation(scale=tuple(args.scale), flip_prob=args.flip_prob,
                                                        jitter_m=args.jitter_m, crop_points=args.crop_points,
                                                        crop_on_targets=args.crop_on_targets)
    amp = args.amp if args.amp is not None else ctx.device.type == "cuda"
    config = TrainConfig(data=data.spec, preset=args.preset, epochs=args.epochs, lr=args.lr,
                         weight_decay=args.weight_decay, lambda_kd=args.lambda_kd, kd_loss=args.kd_loss,
                         source_only=args.source_only, batch_scans=args.batch_scans, kd_points=args.kd_points,
                         seed=args.seed, augment=augment, workers=args.workers, amp=amp)
    teacher = resolve(args.teacher, resolution_from_flag(args.teacher_resolution), ctx.device, args.seed, offline=True)
    if args.init is not None:
        try:
            model = load_checkpoint(args.init, "cpu", expect={"teacher_dim": teacher.feature_dim,
                                                             "teacher_id": teacher.teacher_id,
                                                             "label_set": label_set})
        except (ValueError, FileNotFoundError) as err:
            parser.error(f"--init: {err}")
    else:
        model = build_model(config, teacher.feature_dim, teacher.teacher_id, teacher.resolution, label_set=label_set)
    metadata = {"command": command, "teacher_id": teacher.teacher_id, "teacher_spec": args.teacher,
                "init": str(args.init) if args.init is not None else "",
                "data": data.spec, "val": val.spec if val is not None else "", "domain": args.domain,
                "seed": args.seed, "data_seed": getattr(synthetic_world(data), "seed", None),
                "val_data_seed": getattr(synthetic_world(val), "seed", None),
                "torch": torch.__version__}
    LOG.info("training %s (classes of %s) on %s, teacher %s, device %s, amp %s, %d worker(s)", model.config.name,
             label_set, data.describe(), teacher.teacher_id, ctx.device, amp, args.workers)
    val_scans = val if (val is not None and ctx.is_main) else []  # read lazily, one scan at a time
    result = train(config, model, data, teacher, args.out, ctx, resume=args.resume, val_scans=val_scans,
                   metadata=metadata, progress=ctx.is_main and not args.no_progress,
                   stop_after_epoch=args.stop_after_epoch, cache_dir=args.cache)
    if ctx.is_main and result.final_checkpoint is not None and not args.source_only and args.fusion_head_scans:
        add_fusion_head(result.final_checkpoint, data, teacher, args.cache or args.out / "feature_cache",
                        args.fusion_head_scans, args.seed)
    if ctx.is_main:
        print(json.dumps(result.history[-1] if result.history else {}, indent=1))
        print(f"model written to {result.final_checkpoint}" if result.final_checkpoint else
              f"stopped after epoch {args.stop_after_epoch}; continue with --resume {args.out}")
    if ctx.distributed:
        torch.distributed.destroy_process_group()
    return 0


def add_fusion_head(checkpoint: Path, data: DataSource, teacher: Teacher, cache: Path, scans: int, seed: int) -> None:
    """Fit rho_F (the fusion head on teacher features) on the training scans and write it into ``checkpoint``.

    The head is part of the joint model: it is fitted on the same labelled source scans, through the same feature
    cache (no second teacher forward for a cached image), once the 3D network is trained.
    """
    from ttt_kd_ros.teachers.feature_cache import CachedTeacher
    from ttt_kd_ros.tools.fit_fusion_head import fit_on_source, with_fusion_head

    meta = read_checkpoint_metadata(checkpoint)
    model = load_checkpoint(checkpoint, "cpu")
    subset = data if len(data) <= scans else SubsetSource(data, range(0, len(data), -(-len(data) // scans)),
                                                          data.spec)
    cached = teacher if isinstance(teacher, CachedTeacher) else CachedTeacher(teacher, cache)
    try:
        head, report = fit_on_source(model, subset, cached, points_per_scan=2000, seed=seed)
    except ValueError as err:  # e.g. no camera sees a labelled point: the model keeps no fusion head
        LOG.warning("no fusion head fitted: %s", err)
        return
    save_checkpoint(with_fusion_head(model, head), checkpoint, extra={**meta["extra"], "fusion_head": report})
    LOG.info("fusion head fitted on %d points of %d training scans (train accuracy %.3f)", report["points"],
             report["scans"], report["train_accuracy"])


def trainable(data: DataSource, val: DataSource | None, label_set: str, label_flag: str, source_only: bool) -> str:
    """Why this run cannot train, in words that name the fix ("" when it can); checked before any scan is read."""
    from ttt_kd_ros.labels import common_classes

    for flag, source in (("--data", data), ("--val", val)):
        if source is None or not source.label_set or source.label_set == label_set:
            continue
        try:
            common_classes(source.label_set, label_set)
        except ValueError as err:
            init = label_flag == "--init"
            where = "the --init model's classes" if init else label_flag
            fix = f"--label-set {source.label_set}" + (" and without --init" if init else "")
            return (f"{flag} {source.spec} is labelled in {source.label_set!r}, {where} are {label_set!r}: {err}. "
                    f"Train with {fix}, or add a bridge")
    if not source_only and data.has_cameras is False:
        return (f"--data {data.spec}: its scans carry no camera image, so joint training has no distillation target. "
                "Add the images and their calibration (SemanticKITTI: image_2/ and calib.txt of KITTI odometry in "
                "each sequence; a bag: its image and CameraInfo topics; drop cameras=false), or train the "
                "source-only baseline with --source-only")
    return ""


def open_data(args: argparse.Namespace) -> tuple[DataSource, DataSource | None]:
    """The training source and the validation source (None without one) the arguments name.

    --scans / --seed fill a synthetic spec's missing scans= / seed=. Without --val, synthetic training validates
    on the same domain's rooms of data seed (seed + VAL_SEED_OFFSET), which training never shows.
    """
    data = open_source(args.data or f"synthetic:{args.domain}", scans=args.scans, seed=args.seed)
    val: DataSource | None = None
    if args.val_scans > 0:
        if args.val:
            val = open_source(args.val, scans=args.val_scans, seed=args.seed + VAL_SEED_OFFSET)
            val = val if len(val) <= args.val_scans else SubsetSource(val, range(args.val_scans), val.spec)
        elif (train_world := synthetic_world(data)) is not None:
            val = SyntheticSource(train_world.domain, args.val_scans, train_world.seed + VAL_SEED_OFFSET,
                                  spec=f"{train_world.spec} (validation rooms, seed + {VAL_SEED_OFFSET})")
    return data, val


def setup_logging(out: Path | None, quiet: bool) -> None:
    """Log to stderr and (rank 0) to OUT/train.log, appended across resumed runs."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out / "train.log"))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


if __name__ == "__main__":
    raise SystemExit(main())
