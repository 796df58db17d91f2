"""Confusion matrix and IoU, the numbers every table in this package reports."""

from __future__ import annotations

import numpy as np

from ttt_kd_ros.scan import IGNORE_LABEL


class ConfusionMatrix:
    """Accumulates (truth, prediction) counts over many scans, ignoring IGNORE_LABEL."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        truth = np.asarray(truth).reshape(-1).astype(np.int64)
        predicted = np.asarray(predicted).reshape(-1).astype(np.int64)
        if truth.shape != predicted.shape:
            raise ValueError(f"truth has {truth.size} labels but prediction has {predicted.size}")
        keep = (truth != IGNORE_LABEL) & (truth >= 0) & (truth < self.num_classes)
        keep &= (predicted >= 0) & (predicted < self.num_classes)
        flat = truth[keep] * self.num_classes + predicted[keep]
        self.counts += np.bincount(flat, minlength=self.num_classes**2).reshape(self.counts.shape)

    def iou(self) -> np.ndarray:
        """(C,) IoU per class; NaN for classes absent from both truth and prediction."""
        tp = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes present in truth or prediction (NaN when none are)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts) / total) if total else float("nan")


def miou(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """mIoU of one labelling, for quick checks and single-scan reports."""
    cm = ConfusionMatrix(num_classes)
    cm.update(truth, predicted)
    return cm.miou()
