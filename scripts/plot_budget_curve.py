"""Budget -> mIoU: the rows of ttt_kd_evaluate runs that carry a time budget, as a curve and a table.

    python scripts/plot_budget_curve.py RUN_DIR [RUN_DIR ...] --out docs/img/budget_curve.png

Each RUN_DIR is a ttt_kd_evaluate --out folder whose named rows set ``time_budget_s`` (e.g.
``--row b1=ttt_kd:time_budget_s=1.0,steps=1000``). The curve plots each run's OOD average and in-distribution
mIoU against the budget, with the unadapted joint model as the budget-0 point and, as dashed lines, the
unbounded adapted row (``ttt_kd``, or per run the row named by --reference) and BN-stats; the table adds the
share of the unbounded row's OOD gain each budget keeps and the mean seconds per scan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def budget_rows(results: dict, reference: str) -> tuple[list[tuple[float, dict]], dict, dict | None, dict | None]:
    """(budget, table row) sorted by budget, the joint row, the reference row and the bn_stats row."""
    table = {row["strategy"]: row for row in results["table"]}
    budgets = []
    for row in results["rows"]:
        budget = (row.get("adapt") or {}).get("time_budget_s")
        if budget is not None and row["name"] in table:
            budgets.append((float(budget), table[row["name"]]))
    return sorted(budgets, key=lambda b: b[0]), table["joint_train"], table.get(reference), table.get("bn_stats")


def kept_share(row: dict, joint: dict, reference: dict | None) -> float:
    """How much of the reference row's OOD gain over the joint model this row keeps (nan without a gain)."""
    if reference is None:
        return float("nan")
    gain = reference["ood_average_miou"] - joint["ood_average_miou"]
    return (row["ood_average_miou"] - joint["ood_average_miou"]) / gain if abs(gain) > 1e-9 else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG")
    p.add_argument("--reference", nargs="+", default=["ttt_kd"],
                   help="the unbounded adapted row: one name for every run, or one per run")
    p.add_argument("--labels", nargs="*", default=None, help="a legend label per run (default: its teacher kind)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    print("| run | budget (s) | in-dist. mIoU | OOD avg mIoU | share of the unbounded OOD gain kept | s/scan |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, run in enumerate(args.runs):
        results = json.loads((run / "results.json").read_text())
        name = args.reference[k] if len(args.reference) == len(args.runs) else args.reference[0]
        budgets, joint, reference, bn = budget_rows(results, name)
        label = args.labels[k] if args.labels else results["teacher"]["kind"].split(":")[0]
        xs = [0.0] + [b for b, _ in budgets]
        ood = [100 * joint["ood_average_miou"]] + [100 * r["ood_average_miou"] for _, r in budgets]
        ind = [100 * joint["in_distribution_miou"]] + [100 * r["in_distribution_miou"] for _, r in budgets]
        line = ax.plot(xs, ood, "-o", label=f"{label}: OOD average")[0]
        ax.plot(xs, ind, ":s", color=line.get_color(), alpha=0.6, label=f"{label}: in distribution")
        if reference is not None:
            ax.axhline(100 * reference["ood_average_miou"], color=line.get_color(), ls="--", lw=1,
                       label=f"{label}: {reference['label']} (no budget), OOD")
        if bn is not None:
            ax.axhline(100 * bn["ood_average_miou"], color=line.get_color(), ls="-.", lw=0.8, alpha=0.6,
                       label=f"{label}: BN-stats, OOD")
        for budget, row in [(0.0, joint), *budgets, *([(float("inf"), reference)] if reference else [])]:
            print(f"| {label} | {budget:g} | {100 * row['in_distribution_miou']:.1f} | "
                  f"{100 * row['ood_average_miou']:.1f} | {100 * kept_share(row, joint, reference):.0f} % | "
                  f"{row['seconds_per_scan']:.2f} |")
    ax.set_xlabel("time budget per scan (s); 0 = no adaptation")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Anytime TTT-KD: mIoU against the per-scan time budget (this CPU, 2 threads)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
