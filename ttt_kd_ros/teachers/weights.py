"""Where a teacher's weights come from: nothing is downloaded at run time.

``load_hf_dinov2`` reads a Hugging Face model folder or a hub id already in the
local HF cache, ``load_official_dinov2`` Meta's official
``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``, converted here to the
transformers layout (strict key mapping, every tensor accounted for).
``tiny_teacher`` builds a random model of the same family for tests and the
demo. ``resolve.resolve`` picks the route; the runtime Teacher (teacher.py) never sees which
route built its model.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ttt_kd_ros.teachers.teacher import Teacher

DIGEST_CHARS = 16
"""Hex characters of a weights digest kept in a teacher id: 64 bits, no accidental collision between two models."""

ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "mlp_ratio", "patch_size", "image_size", "layer_norm_eps", "use_swiglu_ffn",
                     "num_register_tokens", "hidden_act", "layerscale_value", "qkv_bias", "num_channels")
"""The config fields a ViT's features depend on; file bookkeeping (_name_or_path, transformers_version) is left out
so one model reads as the same teacher from a folder, a hub id or a converted .pth."""


def weights_digest(module: torch.nn.Module, config: Mapping[str, object] | None = None) -> str:
    """A digest of what a teacher's features depend on: its architecture fields and every tensor it holds.

    Why: a folder name says nothing about the weights in it. Features cached, distilled and stored with a
    checkpoint belong to exactly these weights, so a teacher id carries this digest and other weights saved
    under the same name are another teacher (the cache binding and the checkpoint check then refuse them).
    """
    digest = hashlib.sha256()
    if config is not None:
        digest.update(json.dumps({k: config[k] for k in ARCHITECTURE_KEYS if k in config}, sort_keys=True,
                                 default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:DIGEST_CHARS]


def dinov2_teacher_id(model: torch.nn.Module) -> str:
    """``dinov2:<digest>`` of a transformers DINOv2, however it was read (folder, cached hub id, official .pth)."""
    return f"dinov2:{weights_digest(model, model.config.to_dict())}"


def load_hf_dinov2(spec: str, spec_kind: str) -> torch.nn.Module:
    """A transformers DINOv2 (with or without registers) from a local folder or the local HF cache only."""
    from transformers import AutoConfig, Dinov2Model

    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        if spec_kind == "folder":
            raise ValueError(f"teacher {spec}: not a Hugging Face model folder ({exc})") from None
        raise FileNotFoundError(
            f"teacher {spec!r}: not a local folder or file, and not in the local Hugging Face cache. "
            "Weights are never downloaded at run time: fetch them once where a network is available "
            "(`hf download ID --local-dir DIR`, or save_pretrained into a folder) and pass that folder."
        ) from None
    model_cls = {"dinov2": Dinov2Model, "dinov2_with_registers": _registers_model_class()}.get(config.model_type)
    if model_cls is None:
        raise ValueError(f"teacher {spec}: model_type {config.model_type!r} is not dinov2 / dinov2_with_registers")
    try:
        return model_cls.from_pretrained(spec, local_files_only=True)
    except OSError as exc:
        raise ValueError(f"teacher {spec}: config found but weights could not be loaded ({exc})") from None


def _registers_model_class():
    try:
        from transformers import Dinov2WithRegistersModel
    except ImportError:
        raise ImportError("DINOv2 with registers needs transformers >= 4.48 (Dinov2WithRegistersModel)") from None
    return Dinov2WithRegistersModel


def tiny_teacher(
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    patch_size: int = 14,
    num_register_tokens: int = 0,
    resolution: int | tuple[int, int] = 56,
    device: str | torch.device = "cpu",
) -> Teacher:
    """A random-weight DINOv2-shaped teacher, deterministic in ``seed``, for tests and the demo."""
    from transformers import Dinov2Config, Dinov2Model

    common = dict(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  patch_size=patch_size, image_size=patch_size * 4)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if num_register_tokens:
            from transformers import Dinov2WithRegistersConfig

            model = _registers_model_class()(
                Dinov2WithRegistersConfig(num_register_tokens=num_register_tokens, **common))
        else:
            model = Dinov2Model(Dinov2Config(**common))
    finally:
        torch.random.set_rng_state(generator_state)
    teacher_id = (f"tiny-dinov2:seed={seed},dim={hidden_size},layers={num_layers},heads={num_heads},"
                  f"patch={patch_size},registers={num_register_tokens}")
    return Teacher(model, teacher_id, resolution=resolution, device=device)


# ----------------------------------------------------------------------------------- official .pth conversion

OFFICIAL_ARCHS = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
"""Official DINOv2 sizes: letter -> (hidden size, layers, heads); every one has 64-dim heads and 14-px patches."""

_OFFICIAL_NAME = re.compile(r"dinov2_vit([sblg])14(?:_reg(\d+))?")

# Official per-block names -> transformers names, for both layouts transformers has used.
_LAYOUTS = {
    "split_qkv_v5": {
        "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "proj": "attention.o_proj",
        "swiglu": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    },
    "split_qkv_v4": {
        "q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
        "proj": "attention.output.dense", "swiglu": ("mlp.weights_in", None, "mlp.weights_out"),
    },
}


def load_official_dinov2(path: str | Path, num_heads: int | None = None) -> torch.nn.Module:
    """Meta's released DINOv2 ``.pth`` -> an eval transformers model with the same weights.

    The architecture comes from the tensors (width, depth, registers, patch,
    position grid, MLP kind); heads from ``num_heads``, else the official
    table, else 64-dim heads. A file named like an official release must
    also match that release's size. Keys must match one-to-one: a missing or
    left-over tensor is an error naming it, never silently skipped.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors (official DINOv2 layout)")
    config = official_config(state, path.name, num_heads=num_heads)
    model_cls = _registers_model_class() if getattr(config, "num_register_tokens", 0) else None
    if model_cls is None:
        from transformers import Dinov2Model

        model_cls = Dinov2Model
    model = model_cls(config)
    converted = convert_official_state_dict(state, model.state_dict().keys(), source=str(path))
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: tensor shapes do not fit the inferred architecture: {exc}") from None
    return model.eval()


def official_config(state: dict[str, torch.Tensor], file_name: str = "", num_heads: int | None = None):
    """Dinov2Config / Dinov2WithRegistersConfig for an official state dict."""
    from transformers import Dinov2Config

    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight"):
        if key not in state:
            raise ValueError(f"{file_name}: missing key {key!r}; not an official DINOv2 state dict")
    hidden = int(state["cls_token"].shape[-1])
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    grid = int(state["pos_embed"].shape[1]) - 1
    side = round(grid ** 0.5)
    if side * side != grid:
        raise ValueError(f"{file_name}: pos_embed has {grid} patch positions, not a square grid")
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    swiglu = "blocks.0.mlp.w12.weight" in state
    if swiglu:
        mlp_ratio = 4  # every official SwiGLU model; checked against the tensor below
        swiglu_hidden = (int(hidden * mlp_ratio * 2 / 3) + 7) // 8 * 8
        if state["blocks.0.mlp.w12.weight"].shape[0] != 2 * swiglu_hidden:
            raise ValueError(f"{file_name}: mlp.w12 has {state['blocks.0.mlp.w12.weight'].shape[0]} rows, "
                             f"expected {2 * swiglu_hidden} for width {hidden}")
    else:
        fc1_rows = int(state["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in state else 0
        if fc1_rows == 0 or fc1_rows % hidden:
            raise ValueError(f"{file_name}: blocks.0.mlp.fc1.weight rows {fc1_rows} are not a multiple of {hidden}")
        mlp_ratio = fc1_rows // hidden
    match = _OFFICIAL_NAME.search(file_name)
    if match:
        want_hidden, want_layers, heads = OFFICIAL_ARCHS[match.group(1)]
        want_registers = int(match.group(2) or 0)
        if (hidden, layers, registers) != (want_hidden, want_layers, want_registers):
            raise ValueError(
                f"{file_name}: the name says vit{match.group(1)}14 with {want_registers} registers "
                f"({want_hidden} wide, {want_layers} layers) but the tensors are {hidden} wide, {layers} layers, "
                f"{registers} registers"
            )
    else:
        heads = next((h for d, _, h in OFFICIAL_ARCHS.values() if d == hidden), max(1, hidden // 64))
    if num_heads is not None:
        heads = num_heads
    if hidden % heads:
        raise ValueError(f"{file_name}: width {hidden} is not divisible by {heads} heads")
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=mlp_ratio,
                  patch_size=patch, image_size=side * patch, use_swiglu_ffn=swiglu, layer_norm_eps=1e-6,
                  qkv_bias=True)
    if registers:
        from transformers import Dinov2WithRegistersConfig

        return Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
    return Dinov2Config(**common)


def convert_official_state_dict(
    state: dict[str, torch.Tensor], target_keys, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Official key layout -> the installed transformers layout named by ``target_keys``.

    Fused qkv splits into three projections; SwiGLU w12 splits into gate (first
    half) and up (second half) where transformers keeps them apart.
    """
    target_keys = set(target_keys)
    layout_name = next((name for name, layout in _LAYOUTS.items()
                        if f"encoder.layer.0.{layout['q']}.weight" in target_keys), None)
    if layout_name is None:
        raise ValueError(f"{source}: the installed transformers Dinov2 layout is not one this converter knows")
    layout = _LAYOUTS[layout_name]
    out: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()

    def put(src: str, dst: str, tensor: torch.Tensor | None = None) -> None:
        out[dst] = (state[src] if tensor is None else tensor).clone()
        consumed.add(src)

    globals_map = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
                   "pos_embed": "embeddings.position_embeddings", "register_tokens": "embeddings.register_tokens",
                   "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                   "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                   "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    for src, dst in globals_map.items():
        if src in state:
            put(src, dst)
    if "mask_token" in out:
        out["embeddings.mask_token"] = out["embeddings.mask_token"].reshape(1, -1)
    layers = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    for i in sorted(layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                     "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            if src + name in state:
                put(src + name, dst + name)
        for official, hf in (("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1")):
            if src + official in state:
                put(src + official, dst + hf)
        for suffix in ("weight", "bias"):
            qkv_key = f"{src}attn.qkv.{suffix}"
            if qkv_key in state:
                q, k, v = state[qkv_key].chunk(3, dim=0)
                for part, tensor in (("q", q), ("k", k), ("v", v)):
                    put(qkv_key, f"{dst}{layout[part]}.{suffix}", tensor)
            if f"{src}attn.proj.{suffix}" in state:
                put(f"{src}attn.proj.{suffix}", f"{dst}{layout['proj']}.{suffix}")
            gate, up, down = layout["swiglu"]
            w12_key = f"{src}mlp.w12.{suffix}"
            if w12_key in state:
                if up is None:
                    put(w12_key, f"{dst}{gate}.{suffix}")
                else:
                    first, second = state[w12_key].chunk(2, dim=0)
                    put(w12_key, f"{dst}{gate}.{suffix}", first)
                    put(w12_key, f"{dst}{up}.{suffix}", second)
            if f"{src}mlp.w3.{suffix}" in state:
                put(f"{src}mlp.w3.{suffix}", f"{dst}{down}.{suffix}")
    left_over = sorted(set(state) - consumed)
    missing = sorted(target_keys - set(out))
    extra = sorted(set(out) - target_keys)
    if left_over or missing or extra:
        raise ValueError(
            f"{source}: official DINOv2 keys do not match the model one-to-one: "
            f"unused in file {left_over[:8]}{'...' if len(left_over) > 8 else ''}; "
            f"missing for model {missing[:8]}{'...' if len(missing) > 8 else ''}; "
            f"not in model {extra[:8]}{'...' if len(extra) > 8 else ''}"
        )
    return out


