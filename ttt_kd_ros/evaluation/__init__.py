"""Offline evaluation of strategies across synthetic domain shifts (ttt_kd_evaluate's engine).

splits: named splits from domain or data-source specs, scans streamed from their source; evaluator: strategies x
splits through the Segmenter, the steps curve, the online stream; report: table, JSON, plots.
"""

from ttt_kd_ros.evaluation.evaluator import (
    EVAL_STRATEGIES,
    EvalStrategy,
    RunSettings,
    SplitResult,
    StepsCurve,
    run_curve,
    run_online,
    run_table,
    window_miou,
)
from ttt_kd_ros.evaluation.report import markdown_table, online_summary, relative_gain, table_rows
from ttt_kd_ros.evaluation.splits import (
    DEFAULT_SHIFTS,
    IN_DISTRIBUTION,
    SplitSpec,
    generate_split,
    parse_domain,
    parse_split,
)

__all__ = [
    "DEFAULT_SHIFTS",
    "EVAL_STRATEGIES",
    "IN_DISTRIBUTION",
    "EvalStrategy",
    "RunSettings",
    "SplitResult",
    "SplitSpec",
    "StepsCurve",
    "generate_split",
    "markdown_table",
    "online_summary",
    "parse_domain",
    "parse_split",
    "relative_gain",
    "run_curve",
    "run_online",
    "run_table",
    "table_rows",
    "window_miou",
]
