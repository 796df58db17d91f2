"""ttt_kd_cache_features: compute a data set's teacher features once, into the folder training and evaluation read.

    ttt_kd_cache_features --data 'semantickitti:/data/skitti?sequences=00-10' --teacher /models/dinov2-small \
        --cache /data/cache/skitti_dinov2s --device cuda

Resumable: entries already in the folder are kept and skipped, so an
interrupted run continues where it stopped. The folder is bound to one
teacher and input resolution (its teacher.json); a different teacher is
refused. Scans that fail to load are counted and logged, not fatal. Pass the
same --teacher and --teacher-resolution to ttt_kd_train (with --cache) so it
finds the entries.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import torch

from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.segmenter import resolve_device
from ttt_kd_ros.teachers.feature_cache import FeatureCache
from ttt_kd_ros.teachers.resolve import resolution_from_flag, resolve

LOG = logging.getLogger("ttt_kd_cache_features")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttt_kd_cache_features", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, metavar="SPEC", help="data-source spec (docs/DATA.md)")
    p.add_argument("--cache", type=Path, required=True, help="cache folder (created; bound to the teacher)")
    p.add_argument("--teacher", default="default", help="as ttt_kd_train --teacher")
    p.add_argument("--teacher-resolution", type=int, nargs="+", default=None, help="as ttt_kd_train")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:<i> or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random control teacher (as ttt_kd_train)")
    p.add_argument("--no-progress", action="store_true")
    return p


def fill_cache(data, cache: FeatureCache, progress: bool) -> dict[str, object]:
    """Every camera image of every scan into ``cache``; returns the counts (entries, hits, computed, skipped)."""
    from tqdm import tqdm

    skipped: Counter = Counter()
    images = 0
    for i in tqdm(range(len(data)), desc="teacher features", unit="scan", disable=not progress):
        try:
            scan = data[i]
        except (ValueError, FileNotFoundError, OSError) as err:
            skipped[type(err).__name__] += 1
            LOG.warning("skipping %s: %s", data.item_name(i), err)
            continue
        for view in scan.cameras:
            cache.view_feature_map(view)  # reads an existing entry whole: a truncated one is rebuilt, not a hit
            images += 1
    return {"scans": len(data), "images": images, **cache.stats.as_dict(), "skipped": dict(skipped)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = open_source(args.data)
        device = resolve_device(args.device, "--device")
        teacher = resolve(args.teacher, resolution_from_flag(args.teacher_resolution), device, args.seed,
                          offline=True)
        cache = FeatureCache(args.cache, teacher)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    LOG.info("%s -> %s (teacher %s, resolution %s)", data.describe(), args.cache, teacher.teacher_id,
             teacher.resolution)
    report = fill_cache(data, cache, progress=not args.no_progress)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
