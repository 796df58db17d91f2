"""The frozen teacher: feature maps, cache, sampling, and every way of loading weights (tiny random models)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ttt_kd_ros.teachers.resolve import resolve
from ttt_kd_ros.teachers.teacher import FeatureMap, Teacher
from ttt_kd_ros.teachers.weights import dinov2_teacher_id, load_official_dinov2, tiny_teacher


def random_image(h: int = 60, w: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return tiny_teacher(seed=0, resolution=56)


def test_feature_map_shape_and_normalised(teacher: Teacher) -> None:
    fmap = teacher.feature_map(random_image(60, 100))
    # short side 60 -> 56 = 4 patches; long side 100 * 56/60 = 93.3 -> 7 patches (98 px)
    assert fmap.input_size_px == (98, 56) and fmap.image_size_px == (100, 60)
    assert fmap.features.shape == (teacher.feature_dim, 56 // 14, 98 // 14) == (32, 4, 7)
    assert fmap.grid_size == (7, 4)
    torch.testing.assert_close(fmap.features.norm(dim=0), torch.ones(4, 7))
    assert not fmap.features.requires_grad


def test_feature_map_depends_on_content(teacher: Teacher) -> None:
    a = teacher.feature_map(random_image(seed=1)).features
    b = teacher.feature_map(random_image(seed=2)).features
    assert (a - b).abs().max() > 1e-3
    assert (a[:, 0, 0] - a[:, -1, -1]).abs().max() > 1e-3  # patches differ within one image


def test_input_size_fixed_resolution_rounds_to_patch() -> None:
    t = tiny_teacher(resolution=(30, 100))
    assert t.input_size(1242, 375) == (98, 28)
    assert tiny_teacher(resolution=5).input_size(20, 10) == (14, 14)  # never below one patch
    with pytest.raises(ValueError, match="resolution"):
        tiny_teacher(resolution=(0, 10))


def test_feature_map_cache_hit_skips_forward(teacher: Teacher) -> None:
    teacher.clear_cache()
    image = random_image(seed=3)
    before = teacher.forward_count
    first = teacher.feature_map(image)
    for _ in range(5):  # the k TTT steps
        assert teacher.feature_map(image) is first
    assert teacher.forward_count == before + 1
    copy = image.copy()  # another buffer with equal content is another image
    assert teacher.feature_map(copy) is not first
    assert teacher.forward_count == before + 2


@pytest.mark.parametrize("kind", ["vit", "dense"])
def test_view_feature_maps_batch_the_cameras_and_equal_one_at_a_time(kind: str, device: torch.device) -> None:
    """A rig's cameras go through the teacher in one batched forward per input size; the maps are the ones a
    camera alone gets, and cached cameras cost nothing."""
    from ttt_kd_ros.scan import CameraIntrinsics, CameraView
    from ttt_kd_ros.teachers.dense import DenseSegNet, DenseTeacher, DenseTeacherConfig

    if kind == "vit":
        teacher = tiny_teacher(resolution=42, device=device)
    else:
        config = DenseTeacherConfig()
        torch.manual_seed(0)
        teacher = DenseTeacher(DenseSegNet(config), config, "dense-test", resolution=48, device=device)
    sizes = [(60, 100), (60, 100), (60, 100), (90, 120)]  # three cameras of one size, one of another

    def camera(i: int, hw: tuple[int, int]) -> CameraView:
        intrinsics = CameraIntrinsics(K=np.eye(3), width_px=hw[1], height_px=hw[0])
        return CameraView(random_image(*hw, seed=i), intrinsics, np.eye(4), name=f"cam{i}")

    views = [camera(i, hw) for i, hw in enumerate(sizes)]
    calls = []
    real = teacher._compute_batch
    teacher._compute_batch = lambda images: calls.append(len(images)) or real(images)
    batched = teacher.view_feature_maps(views)
    assert sorted(calls) == [1, 3]  # one forward per input size
    assert teacher.view_feature_maps(views) == batched and sorted(calls) == [1, 3]  # all cached now
    teacher.clear_cache()
    for view, fmap in zip(views, batched, strict=True):
        alone = teacher.view_feature_map(view)
        assert alone.image_size_px == fmap.image_size_px and alone.input_size_px == fmap.input_size_px
        torch.testing.assert_close(alone.features, fmap.features, atol=1e-5, rtol=1e-4)


def test_feature_map_cache_detects_in_place_overwrite(teacher: Teacher) -> None:
    teacher.clear_cache()
    image = random_image(seed=4)
    first = teacher.feature_map(image)
    image[:] = random_image(seed=5)
    second = teacher.feature_map(image)
    assert second is not first
    assert (second.features - first.features).abs().max() > 1e-3


def test_feature_map_cache_evicts_least_recent() -> None:
    t = tiny_teacher(resolution=28)
    t.cache_size = 2
    images = [random_image(28, 28, seed=s) for s in range(3)]
    maps = [t.feature_map(img) for img in images]
    assert t.feature_map(images[2]) is maps[2]
    assert t.feature_map(images[0]) is not maps[0]  # evicted by the third image
    assert t.forward_count == 4


def test_feature_map_rejects_bad_images(teacher: Teacher) -> None:
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8)):
        with pytest.raises(ValueError, match="image_rgb"):
            teacher.feature_map(bad)


def test_sample_patch_centre_equals_patch_feature(teacher: Teacher) -> None:
    fmap = teacher.feature_map(random_image(60, 100, seed=6))
    (w, h), (wp, hp) = fmap.image_size_px, fmap.grid_size
    rows, cols = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
    uv = np.stack([(cols.ravel() + 0.5) * w / wp - 0.5, (rows.ravel() + 0.5) * h / hp - 0.5], axis=1)
    sampled = teacher.sample(fmap, uv)
    expected = fmap.features[:, rows.ravel(), cols.ravel()].T
    torch.testing.assert_close(sampled, expected, atol=1e-5, rtol=1e-5)


def test_sample_between_patches_is_normalised_blend(teacher: Teacher) -> None:
    fmap = teacher.feature_map(random_image(60, 100, seed=7))
    (w, h), (wp, hp) = fmap.image_size_px, fmap.grid_size
    u_mid = 1.0 * w / wp - 0.5  # half way between the centres of columns 0 and 1
    v0 = 0.5 * h / hp - 0.5
    sampled = teacher.sample(fmap, np.array([[u_mid, v0], [-0.5, -0.5]]))
    blend = fmap.features[:, 0, 0] + fmap.features[:, 0, 1]
    torch.testing.assert_close(sampled[0], blend / blend.norm(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampled[1], fmap.features[:, 0, 0], atol=1e-5, rtol=1e-5)  # border repeats the edge
    torch.testing.assert_close(sampled.norm(dim=1), torch.ones(2))


def test_sample_bad_and_empty_pixels(teacher: Teacher) -> None:
    fmap = teacher.feature_map(random_image(seed=8))
    assert teacher.sample(fmap, np.zeros((0, 2))).shape == (0, teacher.feature_dim)
    with pytest.raises(ValueError, match="uv_px"):
        teacher.sample(fmap, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        teacher.sample(fmap, np.array([[np.nan, 1.0]]))


def test_teacher_is_frozen_and_targets_usable_in_a_loss(teacher: Teacher) -> None:
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    fmap = teacher.feature_map(random_image(seed=9))
    target = teacher.sample(fmap, np.array([[10.0, 10.0]]))
    student = torch.randn(1, teacher.feature_dim, requires_grad=True)
    (1 - torch.nn.functional.cosine_similarity(student, target)).sum().backward()
    assert student.grad is not None


def test_tiny_teacher_is_deterministic_and_leaves_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = tiny_teacher(seed=1), tiny_teacher(seed=1)
    assert torch.rand(1) == expected_next
    image = random_image(seed=10)
    torch.testing.assert_close(a.feature_map(image).features, b.feature_map(image).features)
    assert a.teacher_id == b.teacher_id != tiny_teacher(seed=2).teacher_id


# ------------------------------------------------------------------------------- official .pth in Meta's layout


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rebuild Meta's key layout and shapes from a transformers model (the inverse of the converter)."""
    sd = model.state_dict()
    out = {
        "cls_token": sd["embeddings.cls_token"],  # (1, 1, D)
        "mask_token": sd["embeddings.mask_token"].reshape(1, -1),  # (1, D)
        "pos_embed": sd["embeddings.position_embeddings"],  # (1, 1 + N, D)
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],  # (D, 3, 14, 14)
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]  # (1, R, D)
    for i in range(model.config.num_hidden_layers):
        h, o = f"encoder.layer.{i}.", f"blocks.{i}."
        for name in ("norm1", "norm2"):
            out[o + name + ".weight"], out[o + name + ".bias"] = sd[h + name + ".weight"], sd[h + name + ".bias"]
        for s in ("weight", "bias"):
            out[f"{o}attn.qkv.{s}"] = torch.cat([sd[f"{h}attention.{p}_proj.{s}"] for p in "qkv"])  # (3D, D)
            out[f"{o}attn.proj.{s}"] = sd[f"{h}attention.o_proj.{s}"]
            if model.config.use_swiglu_ffn:
                out[f"{o}mlp.w12.{s}"] = torch.cat([sd[f"{h}mlp.gate_proj.{s}"], sd[f"{h}mlp.up_proj.{s}"]])
                out[f"{o}mlp.w3.{s}"] = sd[f"{h}mlp.down_proj.{s}"]
            else:
                out[f"{o}mlp.fc1.{s}"], out[f"{o}mlp.fc2.{s}"] = sd[f"{h}mlp.fc1.{s}"], sd[f"{h}mlp.fc2.{s}"]
        out[o + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[o + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    return {k: v.clone() for k, v in out.items()}


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Make every tensor distinct (layer scales, norms, biases are constants at init) so a swap would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model


def tiny_reference(swiglu: bool, registers: int, heads: int = 1) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=heads, image_size=56, patch_size=14,
                  use_swiglu_ffn=swiglu)
    torch.manual_seed(0)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    return randomise(model, seed=1).eval()


@pytest.mark.parametrize(("swiglu", "registers"), [(False, 0), (True, 4)])
def test_resolve_official_pth_matches_direct_weights(tmp_path: Path, swiglu: bool, registers: int) -> None:
    reference = tiny_reference(swiglu, registers)
    path = tmp_path / "tiny_dinov2_pretrain.pth"
    torch.save(official_state_dict(reference), path)
    loaded = resolve(path, resolution=(42, 70))
    direct = Teacher(reference, "direct", resolution=(42, 70))
    assert loaded.teacher_id.startswith("dinov2:") and "tiny_dinov2_pretrain" not in loaded.teacher_id
    assert loaded.num_prefix_tokens == 1 + registers and loaded.feature_dim == 64
    image = random_image(50, 80, seed=11)
    torch.testing.assert_close(loaded.feature_map(image).features, direct.feature_map(image).features,
                               atol=1e-6, rtol=1e-5)


def test_load_official_dinov2_with_explicit_heads(tmp_path: Path) -> None:
    reference = tiny_reference(swiglu=False, registers=0, heads=4)
    path = tmp_path / "w.pth"
    torch.save(official_state_dict(reference), path)
    model = load_official_dinov2(path, num_heads=4)
    pixels = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).last_hidden_state,
                                   reference(pixel_values=pixels).last_hidden_state, atol=1e-5, rtol=1e-5)
    # the wrong head count gives a different network: the converter cannot hide a bad config
    with torch.no_grad():
        wrong = load_official_dinov2(path, num_heads=1)(pixel_values=pixels).last_hidden_state
    assert (wrong - reference(pixel_values=pixels).last_hidden_state).abs().max() > 1e-3


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_resolve_official_pth_key_mismatch_is_named(tmp_path: Path, change: str) -> None:
    state = official_state_dict(tiny_reference(swiglu=False, registers=0))
    if change == "missing":
        del state["blocks.1.ls2.gamma"]
        expected = "layer_scale2"
    else:
        state["blocks.0.attn.qkv.scale"] = torch.ones(3)
        expected = r"blocks\.0\.attn\.qkv\.scale"
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=expected):
        resolve(path)


def test_resolve_official_name_must_match_size(tmp_path: Path) -> None:
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official_state_dict(tiny_reference(swiglu=False, registers=0)), path)
    with pytest.raises(ValueError, match="vits14"):
        resolve(path)


def test_resolve_pth_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="flat state dict"):
        resolve(path)


# --------------------------------------------------------------------------------- HF folders and hub ids


def test_reports_name_a_dinov2_folder_by_what_was_loaded_not_as_real_dinov2(tmp_path: Path) -> None:
    from ttt_kd_ros.tools.evaluate import teacher_kind

    tiny_teacher(seed=3).model.save_pretrained(tmp_path / "dinov2-small")
    teacher = resolve(tmp_path / "dinov2-small", 28)
    words = teacher_kind(str(tmp_path / "dinov2-small"), teacher)
    assert "real DINOv2" not in words and teacher.teacher_id in words and str(tmp_path / "dinov2-small") in words


def test_tools_name_their_device_flag_when_cuda_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttt_kd_ros.segmenter import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device: 'cuda' asked for but torch sees no CUDA device.*--device cpu"):
        resolve_device("cuda", "--device")


def test_teacher_id_follows_the_weights_not_the_folder_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights as a folder, a renamed folder and a cached hub id: one teacher; other weights under the same
    folder name: another teacher, so a feature cache bound to the first refuses them."""
    import huggingface_hub.constants as hub

    from ttt_kd_ros.teachers.feature_cache import FeatureCache

    first = tiny_teacher(seed=3, resolution=28)
    first.model.save_pretrained(tmp_path / "dinov2-small")
    first.model.save_pretrained(tmp_path / "renamed")
    snapshot = tmp_path / "hub" / "models--acme--dinov2-small" / "snapshots" / "0123abcd"
    first.model.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    specs = (tmp_path / "dinov2-small", tmp_path / "renamed", "acme/dinov2-small")
    ids = {resolve(spec, 28).teacher_id for spec in specs}
    assert len(ids) == 1
    FeatureCache(tmp_path / "cache", resolve(tmp_path / "dinov2-small", 28))
    tiny_teacher(seed=4, resolution=28).model.save_pretrained(tmp_path / "dinov2-small")  # new weights, old name
    other = resolve(tmp_path / "dinov2-small", 28)
    assert other.teacher_id not in ids
    with pytest.raises(ValueError, match="belongs to teacher"):
        FeatureCache(tmp_path / "cache", other)


@pytest.mark.parametrize("registers", [0, 4])
def test_resolve_hf_folder_round_trip(tmp_path: Path, registers: int) -> None:
    original = tiny_teacher(seed=3, num_register_tokens=registers, resolution=42)
    original.model.save_pretrained(tmp_path / "tiny")
    loaded = resolve(tmp_path / "tiny", resolution=42)
    assert loaded.teacher_id == dinov2_teacher_id(original.model)
    assert loaded.num_prefix_tokens == 1 + registers
    image = random_image(seed=12)
    torch.testing.assert_close(loaded.feature_map(image).features, original.feature_map(image).features)


def test_resolve_uncached_hub_id_fails_clearly() -> None:
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        resolve("ttt-kd-ros-tests/not-a-cached-model")


def test_resolve_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve(tmp_path / "missing.pth")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"\.pth"):
        resolve(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        resolve(tmp_path / "empty")


def test_feature_map_dataclass_fields() -> None:
    fmap = FeatureMap(torch.zeros(4, 2, 3), image_size_px=(30, 20), input_size_px=(42, 28))
    assert fmap.grid_size == (3, 2)
