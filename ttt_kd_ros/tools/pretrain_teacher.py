"""ttt_kd_pretrain_teacher: pre-train the DINOv2-architecture stand-in teacher on domain-randomised renders.

Real DINOv2 weights cannot be downloaded where this package is built. What
makes DINOv2 worth distilling for TTT-KD is that its patch features are
semantic and stay so across domains: the joint model's KD loss then rises on a
shifted scan and lowering it moves the backbone towards the right classes
(METHOD.md, "What a teacher must have"). The first stand-in (0.5 M parameters,
minutes of training on the five named domains) had features whose errors
followed colour and palette, so it barely saw a shift. This one is a
transformers ``Dinov2Model`` (``teachers.resolve`` reads it like any DINOv2 folder)
trained on:

- renders of the five named domains (rooms of data seed 2024, which no 3D
  training or evaluation scan uses) and of many randomised domains
  (``data/synthetic/randomised.py``: any palette, light colour, room size,
  lens, camera height and pitch, image noise), so colour carries no class;
- objective 1, patch class distribution through a cosine-prototype head: the
  normalised patch token's cosine to one learned prototype per class, over a
  temperature, is trained (soft cross-entropy) to the histogram of pixel
  classes in the patch. Tokens of a class gather around one direction, the
  property an oracle teacher has by construction;
- objective 2, invariance: two views of each image under independent
  photometric changes (gain, offset, channel swap, grey, contrast, exposure,
  blur, noise) must give the same patch tokens (cosine).

The prototype head is dropped after training. Runs are resumable: the
renders are cached in the output folder (npz, no pickle) and the training
state is saved every ``--checkpoint-every`` steps (``torch.load`` with
``weights_only=True``). The folder ends with config.json + model.safetensors
(save_pretrained) and pretrain_report.json (data, losses, probe mIoU per
domain, the command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.data.synthetic import DOMAINS, scan_seed
from ttt_kd_ros.data.synthetic.randomised import BEYOND_TRAINING, TRAINING, random_domain
from ttt_kd_ros.data.synthetic.renders import render_labeled_images
from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.teachers.probe import PatchProbe, fit_patch_probe, patch_miou, similarity_report
from ttt_kd_ros.teachers.teacher import normalise_pixels

RANDOMISED, BEYOND = "randomised", "beyond_training"
PROBE_NOTE = ("probe_miou: ridge probe on L2-normalised patch tokens -> majority class of the patch, fitted on "
              "'source' training views only, mIoU (%) on held-out rooms of each named domain, on held-out randomised "
              "rooms, and on rooms drawn beyond every training range (BEYOND_TRAINING); within / between: mean "
              "cosine of same-class / different-class patch pairs; centroid_agreement: cosine of each class's mean "
              "feature with its mean on the source training views, averaged over classes")


@dataclass
class PretrainConfig:
    """Architecture, data and optimisation of the stand-in teacher."""

    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 6
    patch_size: int = 8
    rooms_per_domain: int = 40
    randomised_rooms: int = 600
    views_per_room: int = 4
    steps: int = 1200
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    prototype_temperature: float = 0.1
    invariance_weight: float = 1.0
    seed: int = 0
    data_seed: int = 2024  # rooms the 3D network never trains on (its scans use other seed streams)
    held_out_rooms: int = 6  # per named domain and for each randomised range, for the probe report
    checkpoint_every: int = 100


@dataclass
class RenderSet:
    """images: (N, 3, H, W) uint8; labels: (N, H, W) int64; domain: (N,) int64 index into names."""

    images: torch.Tensor
    labels: torch.Tensor
    domain: torch.Tensor
    names: tuple[str, ...]

    def subset(self, name: str) -> RenderSet:
        keep = self.domain == self.names.index(name)
        return RenderSet(self.images[keep], self.labels[keep], self.domain[keep], self.names)


def render_set(domains: tuple[str, ...], rooms: range, views: int, data_seed: int,
               randomised_rooms: range = range(0), beyond_rooms: range = range(0)) -> RenderSet:
    """Views of rooms ``rooms`` of each named domain, plus rooms of randomised domains (training and beyond ranges).

    A randomised room's domain and the room itself are both drawn from its seed, so the same arguments always
    give the same images; ``beyond_rooms`` uses ``BEYOND_TRAINING`` and other seeds than ``randomised_rooms``.
    """
    images, labels, dom = [], [], []
    names = tuple(domains) + ((RANDOMISED,) if len(randomised_rooms) else ()) + ((BEYOND,) if len(beyond_rooms) else ())

    def add(domain, seed: int, index: int) -> None:
        for view in render_labeled_images(domain, seed, views):
            images.append(torch.from_numpy(view.image_rgb).permute(2, 0, 1))
            labels.append(torch.from_numpy(view.labels))
            dom.append(index)

    for d, name in enumerate(domains):
        for room in rooms:
            add(name, scan_seed(data_seed, room), d)
    for room in randomised_rooms:
        seed = scan_seed(data_seed + 1, room)
        add(random_domain(TRAINING, seed), seed, names.index(RANDOMISED))
    for room in beyond_rooms:
        seed = scan_seed(data_seed + 2, room)
        add(random_domain(BEYOND_TRAINING, seed), seed, names.index(BEYOND))
    return RenderSet(torch.stack(images), torch.stack(labels), torch.tensor(dom), names)


def save_render_set(path: Path, renders: RenderSet) -> None:
    np.savez(path, images=renders.images.numpy(), labels=renders.labels.numpy().astype(np.uint8),
             domain=renders.domain.numpy(), names=np.array(renders.names))


def load_render_set(path: Path) -> RenderSet:
    with np.load(path, allow_pickle=False) as data:
        return RenderSet(torch.from_numpy(data["images"]), torch.from_numpy(data["labels"].astype(np.int64)),
                         torch.from_numpy(data["domain"]), tuple(str(n) for n in data["names"]))


def patch_class_distribution(labels: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """(B, H, W) int64 pixel classes -> (B, Hp * Wp, C) fraction of each class in each patch (rows sum to 1)."""
    h, w = labels.shape[1:]
    if h % patch or w % patch:
        raise ValueError(f"label image {h}x{w}: expected multiples of the patch size {patch}")
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(onehot, patch)  # (B, C, Hp, Wp)
    return pooled.flatten(2).transpose(1, 2)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images, each blurred by its own Gaussian sigma in pixels (0 = unchanged), 5-tap separable."""
    taps = torch.arange(-2, 3, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 5)
    b, c, h, w = x.shape
    rows = F.conv2d(F.pad(x.reshape(1, b * c, h, w), (2, 2, 0, 0), mode="replicate"),
                    kernel.repeat_interleave(c, 0).view(b * c, 1, 1, 5), groups=b * c)
    cols = F.conv2d(F.pad(rows, (0, 0, 2, 2), mode="replicate"),
                    kernel.repeat_interleave(c, 0).view(b * c, 1, 5, 1), groups=b * c)
    return cols.view(b, c, h, w)


def photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, H, W) float in [0, 1], colour-changed per image the way domains differ.

    Per-channel gain and offset (lighting and palette), exposure (gamma), a
    random channel permutation (half the batch), greyscale (a fifth),
    contrast, blur (a third) and Gaussian noise (sensor). Geometry is
    untouched, so patch i of both copies shows the same surface.
    """
    x = images.float() / 255.0
    b = x.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    x = x * uniform(0.6, 1.4, b, 3, 1, 1) + uniform(-0.15, 0.15, b, 3, 1, 1)
    x = x.clamp(0.0, 1.0) ** torch.exp(uniform(-0.5, 0.5, b, 1, 1, 1))
    swap = torch.rand(b, generator=generator) < 0.5
    for i in torch.nonzero(swap).flatten().tolist():
        x[i] = x[i, torch.randperm(3, generator=generator)]
    grey = torch.rand(b, generator=generator) < 0.2
    x[grey] = x[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.6, 1.4, b, 1, 1, 1) + mean
    sigma = uniform(0.0, 1.2, b) * (torch.rand(b, generator=generator) < 0.33)
    x = _blur(x, sigma)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.06, b, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def build_model(config: PretrainConfig, image_hw: tuple[int, int]):
    """A randomly initialised transformers Dinov2Model of the configured size."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(config.seed)
    dino = Dinov2Config(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                        num_attention_heads=config.num_heads, patch_size=config.patch_size,
                        image_size=max(image_hw), mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6)
    return Dinov2Model(dino)


class PrototypeHead(torch.nn.Module):
    """Cosine classifier: logits = cos(token, prototype_c) / temperature for each class c (dropped after training).

    A linear head lets a class live in any half-space, so tokens of one class may stay spread out by palette;
    cosine to a prototype pulls every token of a class towards one direction, which is what KD targets need.
    """

    def __init__(self, dim: int, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.prototypes = torch.nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)
        self.temperature = float(temperature)

    @property
    def num_classes(self) -> int:
        return int(self.prototypes.shape[0])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(tokens, dim=-1) @ F.normalize(self.prototypes, dim=-1).T / self.temperature


def patch_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised pixels -> (B, Hp * Wp, D) final patch tokens (what Teacher distils)."""
    return model(pixel_values=pixels).last_hidden_state[:, 1:]


def pretrain_losses(model, head: PrototypeHead, images: torch.Tensor, labels: torch.Tensor, patch: int,
                    invariance_weight: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Soft cross-entropy of patch class distributions on two photometric views, plus their token cosine distance."""
    target = patch_class_distribution(labels, patch, head.num_classes)
    view_a = patch_tokens(model, normalise_pixels(photometric(images, generator)))
    view_b = patch_tokens(model, normalise_pixels(photometric(images, generator)))
    ce = sum(-(target * F.log_softmax(head(t), dim=-1)).sum(-1).mean() for t in (view_a, view_b)) / 2
    invariance = (1.0 - F.cosine_similarity(view_a, view_b, dim=-1)).mean()
    return {"total": ce + invariance_weight * invariance, "class": ce, "invariance": invariance}


@torch.no_grad()
def patch_features(model, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N * Hp * Wp, D) L2-normalised patch tokens, as Teacher gives them."""
    toks = [F.normalize(patch_tokens(model, normalise_pixels(images[i:i + 32].float() / 255.0)), dim=-1)
            for i in range(0, len(images), 32)]
    return torch.cat(toks).flatten(0, 1)


def majority_classes(labels: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """(N, H, W) pixel classes -> (N * Hp * Wp,) the majority class of every patch."""
    return patch_class_distribution(labels, patch, num_classes).argmax(-1).flatten()


def probe_report(model, fit_on: RenderSet, held_out: RenderSet, patch: int,
                 num_classes: int) -> dict[str, dict[str, float]]:
    """Per held-out domain: patch linear-probe mIoU (%), the probe fitted on 'source' training views only, and
    the feature-similarity report against the source training views (teachers.probe.similarity_report).

    A probe fitted on one domain and scored on the others measures exactly what KD needs: class carried by the
    features across domains, not recovered by refitting per domain.
    """
    source = fit_on.subset("source")
    source_x, source_y = patch_features(model, source.images), majority_classes(source.labels, patch, num_classes)
    probe: PatchProbe = fit_patch_probe(source_x, source_y, num_classes)
    out = {}
    for name in held_out.names:
        part = held_out.subset(name)
        x, y = patch_features(model, part.images), majority_classes(part.labels, patch, num_classes)
        similarity = similarity_report(x, y, source_x, source_y, num_classes)
        out[name] = {"probe_miou": round(100 * patch_miou(probe, x, y, num_classes), 1), **asdict(similarity)}
    return out


def report_only(out_dir: Path, config: PretrainConfig) -> dict:
    """Re-run the probe and similarity report of a saved teacher folder (its renders cached or made again),
    for the trained weights and for the same architecture's seeded random initialisation."""
    from transformers import Dinov2Model

    train_set, test_set, _ = cached_renders(config, out_dir)
    model = Dinov2Model.from_pretrained(str(out_dir)).eval()
    patch = int(model.config.patch_size)
    report_path = out_dir / "pretrain_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    classes = SYNTHETIC_INDOOR.num_classes
    report["probe_trained"] = probe_report(model, train_set, test_set, patch, classes)
    untrained = build_model(config, tuple(train_set.images.shape[2:])).eval()  # the same seeded initialisation
    report["probe_random_init"] = probe_report(untrained, train_set, test_set, patch, classes)
    for stale in ("probe_patch_miou_random_init", "probe_patch_miou_trained"):  # reports of an older format
        report.pop(stale, None)
    report["probe_note"] = PROBE_NOTE
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def cached_renders(config: PretrainConfig, out_dir: Path) -> tuple[RenderSet, RenderSet, float]:
    """Training and held-out renders, from out_dir's cache when a previous run of the same config made them."""
    key = json.dumps({k: getattr(config, k) for k in ("rooms_per_domain", "randomised_rooms", "views_per_room",
                                                       "data_seed", "held_out_rooms")}, sort_keys=True)
    cache = out_dir / "renders"
    train_path, held_path, key_path = cache / "train.npz", cache / "held_out.npz", cache / "key.json"
    if key_path.is_file() and key_path.read_text() == key and train_path.is_file() and held_path.is_file():
        return load_render_set(train_path), load_render_set(held_path), 0.0
    t0 = time.perf_counter()
    domains = tuple(DOMAINS)
    r, h = config.rooms_per_domain, config.held_out_rooms
    train = render_set(domains, range(r), config.views_per_room, config.data_seed,
                       randomised_rooms=range(config.randomised_rooms))
    held = render_set(domains, range(r, r + h), config.views_per_room, config.data_seed,
                      randomised_rooms=range(config.randomised_rooms, config.randomised_rooms + h),
                      beyond_rooms=range(h))
    cache.mkdir(parents=True, exist_ok=True)
    save_render_set(train_path, train)
    save_render_set(held_path, held)
    key_path.write_text(key)
    return train, held, time.perf_counter() - t0


def _schedule(config: PretrainConfig):
    warmup = max(1, config.steps // 20)
    # a Python float (not numpy's): the scheduler's state is saved and read back with weights_only=True
    return lambda s: float(min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / config.steps))))


def pretrain(config: PretrainConfig, out_dir: Path, command: str = "", progress: bool = True) -> dict:
    """Render (or reuse cached renders), train (resuming a saved state), probe, save; returns the report."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    train_set, test_set, render_s = cached_renders(config, out_dir)
    image_hw = tuple(train_set.images.shape[2:])
    num_classes = SYNTHETIC_INDOOR.num_classes
    model = build_model(config, image_hw)
    head = PrototypeHead(config.hidden_size, num_classes, config.prototype_temperature)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    state_path = out_dir / "train_state.pt"
    start, train_s, probe_random = 0, 0.0, None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["config"] != json.dumps(asdict(config), sort_keys=True):
            raise ValueError(f"{state_path}: saved for another configuration; remove it or use another --out")
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        start, train_s = int(state["step"]), float(state["train_s"])
        history = json.loads(state["history"])
        probe_random = json.loads(state["probe_random"])
    if probe_random is None:  # the untrained network's numbers: what training added
        probe_random = probe_report(model.eval(), train_set, test_set, config.patch_size, num_classes)

    def save_state(step: int) -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "generator": generator.get_state(), "step": step,
                    "train_s": train_s, "history": json.dumps(history), "probe_random": json.dumps(probe_random),
                    "config": json.dumps(asdict(config), sort_keys=True)}, tmp)
        tmp.replace(state_path)

    model.train()
    bar = tqdm(range(start, config.steps), desc="pretrain teacher", unit="step", disable=not progress,
               initial=start, total=config.steps)
    for step in bar:
        t1 = time.perf_counter()
        batch = torch.randint(len(train_set.images), (config.batch_size,), generator=generator)
        images, labels = train_set.images[batch], train_set.labels[batch]
        if step % 2:  # horizontal flip of image and labels together
            images, labels = images.flip(-1), labels.flip(-1)
        losses = pretrain_losses(model, head, images, labels, config.patch_size, config.invariance_weight,
                                 generator)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        history.append(values)
        train_s += time.perf_counter() - t1
        bar.set_postfix(cls=f"{values['class']:.3f}", inv=f"{values['invariance']:.3f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            save_state(step + 1)
    model.eval()
    probe_trained = probe_report(model, train_set, test_set, config.patch_size, num_classes)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    first, last = history[: max(1, len(history) // 20)], history[-max(1, len(history) // 20):]
    counts = {name: int((train_set.domain == i).sum()) for i, name in enumerate(train_set.names)}
    report = {
        "what": "stand-in for DINOv2: a Dinov2Model pre-trained on domain-randomised synthetic renders",
        "objective": "patch class-distribution soft CE through a cosine-prototype head (dropped) + two-view "
                     "photometric-invariance cosine",
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size_hw": list(image_hw),
        "teacher_resolution_hw": list(image_hw),
        "train_images_per_domain": counts,
        "train_images": len(train_set.images),
        "held_out_images": len(test_set.images),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "loss_first": {k: float(np.mean([h[k] for h in first])) for k in first[0]},
        "loss_last": {k: float(np.mean([h[k] for h in last])) for k in last[0]},
        "probe_random_init": probe_random,
        "probe_trained": probe_trained,
        "probe_note": PROBE_NOTE,
        "command": command,
    }
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    state_path.unlink(missing_ok=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    p = argparse.ArgumentParser(prog="ttt_kd_pretrain_teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True,
                   help="HF model folder to write (save_pretrained); a run left there resumes")
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--report-only", action="store_true",
                   help="only recompute the probe / similarity report of the teacher already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    values = {k: getattr(args, k) for k in asdict(PretrainConfig())}
    command = shlex.join(["ttt_kd_pretrain_teacher", *(sys.argv[1:] if argv is None else argv)])
    if args.report_only:
        print(json.dumps(report_only(args.out, PretrainConfig(**values))["probe_trained"], indent=1))
        return 0
    report = pretrain(PretrainConfig(**values), args.out, command)
    print(json.dumps({k: report[k] for k in ("loss_first", "loss_last", "probe_random_init",
                                             "probe_trained", "render_s", "train_s")}, indent=1))
    print(f"teacher written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
