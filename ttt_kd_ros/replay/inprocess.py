"""Replay a bag through the Segmenter in this process: the model's own cost, no DDS, no node.

Scans come from data.rosbag (the same decoding and camera pairing the node
does, with each cloud's own tf), one Segmenter per strategy, frames back to
back. Latency is segment() alone; reading and decoding the bag is not
counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ttt_kd_ros.data.rosbag import RosbagScans
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.replay.bag_messages import BagPlan
from ttt_kd_ros.replay.bag_writer import UNLABELLED
from ttt_kd_ros.replay.report import FrameRecord, StrategyRun
from ttt_kd_ros.scan import IGNORE_LABEL


def ground_truth(labels: np.ndarray) -> np.ndarray:
    """Bag labels (uint16 field; 65535 = unlabelled) -> int64 with IGNORE_LABEL."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.where(labels >= UNLABELLED, IGNORE_LABEL, labels)


def scoring_label_set(plan_label_set: str, model_label_set: str) -> tuple[str, str]:
    """(label set to score in, note): the bag's when it names one, else the model's; "" when they disagree."""
    if plan_label_set and model_label_set and plan_label_set != model_label_set:
        return "", (f"the bag's labels are {plan_label_set} but the model predicts {model_label_set}: "
                    "mIoU not computed")
    return plan_label_set or model_label_set, ""


def run_inprocess(plan: BagPlan, strategies: Sequence[str], parameters: Mapping[str, Any],
                  max_frames: int | None = None, progress: Callable[[int, str], Any] | None = None
                  ) -> tuple[list[StrategyRun], str]:
    """One StrategyRun per strategy, and the label set the scores are in ("" when not scored: the bag's clouds
    carry no labels, or labels of another set than the model's).

    ``parameters``: flat node parameters (checkpoint, teacher, device, adapt.*; missing ones take the
    node's defaults); adapt.strategy is replaced per run. ``progress(total, description)`` returns a
    tqdm-like bar (update/close) or None.
    """
    from ttt_kd_ros.parameters.segmenter_config import segmenter_from_parameters

    runs = []
    scored_in = ""
    for strategy in strategies:
        segmenter = segmenter_from_parameters(parameters.get("checkpoint"), parameters.get("teacher", "builtin"),
                                    parameters.get("device", "auto"), {**parameters, "adapt.strategy": strategy})
        scored_in, note = scoring_label_set(plan.label_set, segmenter.label_set)
        scans = RosbagScans(plan.path, cloud_topic=plan.cloud_topic, cameras=plan.cameras, max_scans=max_frames,
                            label_set=plan.label_set)
        confusion = ConfusionMatrix(segmenter.num_classes) if scored_in else None
        frames: list[FrameRecord] = []
        labelled = False
        bar = progress(min(plan.num_clouds, max_frames or plan.num_clouds), strategy) if progress else None
        start = time.perf_counter()
        for index, scan in enumerate(scans):
            sent = time.perf_counter() - start
            prediction = segmenter.segment(scan)
            done = time.perf_counter() - start
            frame = FrameRecord(index=index, stamp_ns=scan.stamp_ns, num_points=scan.num_points, sent_s=sent,
                                done_s=done, stages_s=dict(prediction.timings_s), adapted=prediction.adapted,
                                steps_run=prediction.steps_run, skip_reason=prediction.skip_reason,
                                kd_loss_before=prediction.kd_loss_before, kd_loss_after=prediction.kd_loss_after)
            if confusion is not None and scan.labels is not None:
                truth = ground_truth(scan.labels)
                confusion.update(truth, prediction.labels)
                single = ConfusionMatrix(segmenter.num_classes)
                single.update(truth, prediction.labels)
                frame.miou = single.miou()
            frames.append(frame)
            labelled = labelled or scan.labels is not None
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if not labelled:  # an unlabeled bag: nothing was scored, whatever label set the model predicts
            scored_in, confusion = "", None
        run = StrategyRun(strategy, frames, wall_s=time.perf_counter() - start, confusion=confusion)
        if note:
            run.notes.append(note)
        if scans.stats.bad_clouds:
            run.notes.append(f"{scans.stats.bad_clouds} clouds could not be decoded")
        for camera, misses in sorted(scans.stats.camera_misses.items()):
            run.notes.append(f"camera {camera} missing for {misses} scans")
        runs.append(run)
    return runs, scored_in
