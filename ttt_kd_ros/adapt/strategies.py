"""The one name -> class table and the builder: how a config's ``strategy`` string becomes a strategy.

A module of its own because it is the only place that knows every strategy:
the strategies do not know each other, and AdaptConfig validates its
``strategy`` against these keys.
"""

from __future__ import annotations

from torch import nn

from ttt_kd_ros.adapt.bn_stats import BNStats
from ttt_kd_ros.adapt.config import AdaptConfig, Strategy
from ttt_kd_ros.adapt.gradient import GradientStrategy
from ttt_kd_ros.adapt.none import NoAdaptation
from ttt_kd_ros.adapt.tent import Tent
from ttt_kd_ros.adapt.ttt_kd import TTTKD
from ttt_kd_ros.adapt.ttt_kd_online import TTTKDOnline
from ttt_kd_ros.adapt.verbs import collect_params, make_optimizer

STRATEGIES: dict[str, type[Strategy]] = {
    "none": NoAdaptation,
    "ttt_kd": TTTKD,
    "ttt_kd_online": TTTKDOnline,
    "tent": Tent,
    "bn_stats": BNStats,
}
"""The one name -> class table the Segmenter, the node and the CLI tools read."""


def build_strategy(model: nn.Module, config: AdaptConfig) -> Strategy:
    """The strategy the config names, bound to ``model`` (which it configures), its optimizer built here.

    The builder, not the strategy, makes the optimizer (TENT's composition): over exactly the parameters the
    strategy updates, so a caller wanting another optimizer builds the strategy with its own instead.
    """
    cls = STRATEGIES[config.strategy]
    if not issubclass(cls, GradientStrategy):
        return cls(model, config)
    params, _ = collect_params(model, cls.param_set(config))
    return cls(model, config, make_optimizer(params, config))
