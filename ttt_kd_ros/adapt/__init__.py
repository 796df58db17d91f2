"""Test-time adaptation strategies behind one interface, chosen from one table.

A strategy owns the model's trainable state while the Segmenter runs it:

    strategy = STRATEGIES[name](model, AdaptConfig(...))   # or build_strategy
    result = strategy.adapt(prepared, targets)             # k updates on this scan
    output = strategy.predict(prepared)                    # frozen forward, the strategy's mode
    if strategy.episodic: strategy.reset()                 # in-place restore of the source weights

This module only re-exports, so ``from ttt_kd_ros.adapt import AdaptConfig``
serves every caller; each piece lives in its own module:

``config``         AdaptConfig, AdaptResult, the Targets and Strategy protocols, PARAM_SETS, OPTIMIZERS
``verbs``          collect_params, configure_model, make_optimizer, SourceState (the TENT-style verbs)
``base``           BaseStrategy: predict, reset and retune, written once for every strategy
``none``           NoAdaptation (the baseline)
``bn_stats``       BNStats (BatchNorm statistics re-estimated on the scan, no gradient)
``gradient``       GradientStrategy: the one step loop of every weight-moving strategy
``ttt_kd``         TTTKD (per scan, reset after each)
``ttt_kd_online``  TTTKDOnline (updates carry over, drift guard)
``tent``           Tent (entropy on the normalisation parameters)
``strategies``     STRATEGIES (name -> class) and build_strategy
``class_prior``    the label-shift correction of a scan's output (scan_class_weights, reweight), which the
                   Segmenter applies after fusion when AdaptConfig.prior_strength asks for it
"""

from ttt_kd_ros.adapt.base import BaseStrategy
from ttt_kd_ros.adapt.bn_stats import BNStats
from ttt_kd_ros.adapt.config import OPTIMIZERS, PARAM_SETS, AdaptConfig, AdaptResult, Strategy, Targets
from ttt_kd_ros.adapt.gradient import GradientStrategy
from ttt_kd_ros.adapt.none import NoAdaptation
from ttt_kd_ros.adapt.strategies import STRATEGIES, build_strategy
from ttt_kd_ros.adapt.tent import Tent
from ttt_kd_ros.adapt.ttt_kd import TTTKD
from ttt_kd_ros.adapt.ttt_kd_online import TTTKDOnline
from ttt_kd_ros.adapt.verbs import (
    DECODER_PREFIXES,
    NORM_TYPES,
    SourceState,
    collect_params,
    configure_model,
    make_optimizer,
)

__all__ = [
    "DECODER_PREFIXES",
    "NORM_TYPES",
    "OPTIMIZERS",
    "PARAM_SETS",
    "STRATEGIES",
    "TTTKD",
    "AdaptConfig",
    "AdaptResult",
    "BNStats",
    "BaseStrategy",
    "GradientStrategy",
    "NoAdaptation",
    "SourceState",
    "Strategy",
    "TTTKDOnline",
    "Targets",
    "Tent",
    "build_strategy",
    "collect_params",
    "configure_model",
    "make_optimizer",
]
