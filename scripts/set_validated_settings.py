"""Write a model's validated adaptation and fusion settings into its checkpoint (weights unchanged).

The settings are chosen on the validation suite with scripts/choose_output_rule.py (docs/EVALUATION.md records the
choice and the command); this stores them where the node, the evaluator and the demo read them:

    python scripts/set_validated_settings.py --checkpoint IN.safetensors --out OUT.safetensors \
        --adapt strategy=ttt_kd,steps=20,lr=1e-4,bn_train=false,guard_kd_ratio=0.6,unadapted_weight=0.3 \
        --fusion mode=mean,weight_2d=0.3 --how "validation suite lidar, seed 777, 4 scans x 20 shifts"

``--class-prior`` stores the model's source class prior (NetConfig.class_prior: the ``source_prior`` line of
scripts/validation_shifts.py) that ``adapt.prior_strength`` needs; without it the checkpoint's prior is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ttt_kd_ros.config_edits import apply_overrides, pairs
from ttt_kd_ros.fusion import FusionConfig
from ttt_kd_ros.validated_settings import ValidatedSettings


def changed_fields(text: str, base: object, where: str) -> dict:
    """The fields ``text`` sets (``f=v,...``), typed and checked by the dataclass they belong to."""
    updated = apply_overrides(base, text, where)
    return {name: getattr(updated, name) for name, _ in pairs(text, where)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--adapt", default="", help="AdaptConfig fields, f=v,...")
    p.add_argument("--fusion", default="", help="FusionConfig fields, f=v,...")
    p.add_argument("--how", required=True, help="where the settings were chosen (stored with them)")
    p.add_argument("--class-prior", default="", help="the model's source class prior, comma-separated shares")
    args = p.parse_args()
    meta = read_checkpoint_metadata(args.checkpoint)
    settings = ValidatedSettings(changed_fields(args.adapt, AdaptConfig(), "--adapt"),
                                 changed_fields(args.fusion, FusionConfig(), "--fusion"), args.how)
    ValidatedSettings.from_meta(settings.to_meta(), args.out)  # the values are checked before writing
    model = load_checkpoint(args.checkpoint)
    if settings.fusion.get("mode", "off") != "off" and model.fusion_head is None:
        raise SystemExit(f"{args.checkpoint}: fusion settings need a fusion head (ttt_kd_fit_fusion_head)")
    if args.class_prior:
        model.config = dataclasses.replace(model.config, class_prior=tuple(
            float(v) for v in args.class_prior.split(",") if v.strip()))  # NetConfig checks the shares
    if settings.adapt.get("prior_strength", 0) and not model.config.class_prior:
        raise SystemExit(f"{args.checkpoint}: adapt.prior_strength needs the model's class prior (--class-prior)")
    save_checkpoint(model, args.out, extra=meta.get("extra"), validated=settings.to_meta())
    print(f"{args.out}: validated {settings.to_meta()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
