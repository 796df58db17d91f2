"""The "none" strategy: the model as it is, so the baseline runs through the same interface as every strategy.

Having it as a strategy (not a special case in the Segmenter) lets the
evaluator's source-only and joint-train rows, the node and the tools run
the one code path and differ only in the table name.
"""

from __future__ import annotations

from typing import Any

from ttt_kd_ros.adapt.base import BaseStrategy
from ttt_kd_ros.adapt.config import AdaptResult, Targets


class NoAdaptation(BaseStrategy):
    """The source (or joint-train) model as it is: the baseline every strategy is measured against.

    It holds no adaptation state, so the base's reset has nothing to restore and retune only takes the config.
    """

    name = "none"
    needs_targets = False
    episodic = False

    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult:
        return AdaptResult(reason="strategy none")
