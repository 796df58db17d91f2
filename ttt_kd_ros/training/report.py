"""The picture of a training run: loss terms and validation mIoU per epoch, rewritten after every epoch.

A run on a cluster is watched from its folder; a curve shows at a glance
what history.jsonl holds (divergence, a KD term that never falls, a
validation mIoU that stopped rising).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_history(history: Sequence[dict[str, float]], path: Path, title: str = "training") -> Path:
    """Loss, CE and KD (left) and validation mIoU (right, when recorded) against epoch, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, style in (("loss", "-o"), ("ce", "--s"), ("kd", ":^")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            left.plot(epochs, values, style, label=key, markersize=4)
    left.set_xlabel("epoch")
    left.set_ylabel("mean loss per scan")
    left.legend()
    left.grid(alpha=0.3)
    val = [(e, 100 * r["val_miou"]) for e, r in zip(epochs, history, strict=True) if "val_miou" in r]
    if val:
        right.plot([e for e, _ in val], [m for _, m in val], "-o", color="tab:green", markersize=4)
        right.set_ylabel("validation mIoU (%)")
    else:
        right.text(0.5, 0.5, "no validation scans", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("epoch")
    right.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
