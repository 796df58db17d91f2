"""A model's validated settings: the adaptation and fusion choices measured for it, carried in its checkpoint.

Why: the best learning rate, BN mode and fusion rule depend on the model (the
LiDAR model adapts best with running statistics, the RGB-D one with the
scan's), so one global default cannot serve both, and a user who names a
checkpoint must not need to know its recipe. The choice is made once on a
validation suite (evaluation/suites.py) and stored beside the weights
(``checkpoint_format.save_checkpoint(validated=...)``); the node, the
evaluator and the demo start from it, and only settings the user gives
explicitly override it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.fusion import FusionConfig


@dataclass(frozen=True)
class ValidatedSettings:
    """adapt: AdaptConfig fields for ``adapt["strategy"]``; fusion: FusionConfig fields; how: where they come from."""

    adapt: dict[str, Any] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)
    how: str = ""

    @classmethod
    def from_meta(cls, validated: dict[str, Any], where: str) -> ValidatedSettings:
        """From a checkpoint's ``validated`` metadata; ValueError naming ``where`` and the unknown field."""
        adapt, fusion = dict(validated.get("adapt") or {}), dict(validated.get("fusion") or {})
        for name, values, kind in (("adapt", adapt, AdaptConfig), ("fusion", fusion, FusionConfig)):
            unknown = sorted(set(values) - {f.name for f in dataclasses.fields(kind)})
            if unknown:
                raise ValueError(f"{where}: validated.{name} has unknown fields {unknown}")
        settings = cls(adapt, fusion, str(validated.get("how", "")))
        settings.apply(AdaptConfig(), FusionConfig())  # their values are checked once, here
        return settings

    def to_meta(self) -> dict[str, Any]:
        return {"adapt": dict(self.adapt), "fusion": dict(self.fusion), "how": self.how}

    def apply(self, adapt: AdaptConfig, fusion: FusionConfig, given: Iterable[str] = ()
              ) -> tuple[AdaptConfig, FusionConfig]:
        """``adapt`` and ``fusion`` with the validated values put in, except the fields named in ``given``
        (``"adapt.lr"``, ``"fusion.mode"``: what the user set explicitly). Adaptation values apply only when
        ``adapt`` runs the strategy they were validated for (a learning rate for TTT-KD is not TENT's);
        fusion applies to every strategy."""
        given = set(given)
        adapt_changes = {k: v for k, v in self.adapt.items() if f"adapt.{k}" not in given and k != "strategy"}
        if self.adapt.get("strategy", adapt.strategy) != adapt.strategy:
            adapt_changes = {}
        fusion_changes = {k: v for k, v in self.fusion.items() if f"fusion.{k}" not in given}
        return dataclasses.replace(adapt, **adapt_changes), dataclasses.replace(fusion, **fusion_changes)
