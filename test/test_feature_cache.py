"""The teacher feature cache: filled once, reused bit for bit, bound to its teacher, robust to broken entries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from layout_semantickitti import write_semantickitti

from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.teachers.feature_cache import CachedTeacher, FeatureCache
from ttt_kd_ros.teachers.weights import tiny_teacher
from ttt_kd_ros.tools import cache_features
from ttt_kd_ros.tools import train as train_tool


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def _fill(spec: str, cache: Path, capsys, teacher: str = "tiny") -> dict:
    assert cache_features.main(["--data", spec, "--cache", str(cache), "--teacher", teacher,
                                "--teacher-resolution", "28", "--device", "cpu", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture()
def skitti(tmp_path: Path) -> str:
    root = write_semantickitti(tmp_path / "skitti", {"00": 3}, points=300)
    return f"semantickitti:{root}"


def test_cache_command_fills_once_then_reuses_every_entry_unchanged(skitti, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    first = _fill(skitti, cache, capsys)
    assert (first["images"], first["computed"], first["hits"]) == (3, 3, 0)
    files = _tree_digest(cache)
    assert len(files) == 3
    second = _fill(skitti, cache, capsys)
    assert (second["computed"], second["hits"]) == (0, 3)
    assert _tree_digest(cache) == files


def test_a_partial_cache_resumes_with_only_the_missing_entries(skitti, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    assert _fill(f"{skitti}?max_scans=1", cache, capsys)["computed"] == 1
    (cache / "00").mkdir(exist_ok=True)
    (cache / "00" / "half-written.safetensors.123.tmp").write_bytes(b"\0" * 10)  # an interrupted write
    resumed = _fill(skitti, cache, capsys)
    assert (resumed["computed"], resumed["hits"]) == (2, 1)


def test_cache_command_reads_every_entry_and_rebuilds_a_truncated_one(skitti, tmp_path, capsys) -> None:
    """An entry cut short (a full disk, a killed copy) is not a hit: the command reads it, finds it broken, rebuilds."""
    cache = tmp_path / "cache"
    _fill(skitti, cache, capsys)
    entry = sorted(cache.rglob("*.safetensors"))[0]
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    again = _fill(skitti, cache, capsys)
    assert (again["hits"], again["rebuilt"], again["computed"]) == (2, 1, 1)
    assert FeatureCache(cache, tiny_teacher(resolution=28))._read(entry) is not None  # whole again


def test_cache_of_another_teacher_is_refused_naming_both(skitti, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    _fill(skitti, cache, capsys)
    other = tiny_teacher(seed=1, resolution=28)
    with pytest.raises(ValueError, match=r"belongs to teacher 'tiny-dinov2:seed=0.*this run uses 'tiny-dinov2:seed=1"):
        FeatureCache(cache, other)
    with pytest.raises(SystemExit):  # the command reports it as a usage error
        cache_features.main(["--data", skitti, "--cache", str(cache), "--teacher", "tiny", "--seed", "1",
                             "--teacher-resolution", "28", "--no-progress"])
    assert "belongs to teacher" in capsys.readouterr().err


def test_cache_at_another_resolution_names_the_flag_that_fits_it(skitti, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    _fill(skitti, cache, capsys)
    with pytest.raises(ValueError, match=r"at resolution 28 .* at \[28, 42\].*--teacher-resolution 28\)"):
        FeatureCache(cache, tiny_teacher(resolution=(28, 42)))


def test_served_features_are_the_same_cold_and_warm_and_a_broken_entry_is_recomputed(skitti, tmp_path) -> None:
    view = open_source(skitti)[0].cameras[0]
    teacher = tiny_teacher(resolution=28)
    cold = CachedTeacher(teacher, tmp_path / "cache").view_feature_map(view)
    warm_teacher = CachedTeacher(teacher, tmp_path / "cache")
    warm = warm_teacher.view_feature_map(view)
    assert torch.equal(cold.features, warm.features) and warm_teacher.cache.stats.hits == 1
    # float16 storage: within half precision of the teacher's own float32 features.
    direct = teacher.view_feature_map(view).features
    assert torch.allclose(direct, warm.features, atol=2e-3) and not torch.equal(direct, warm.features)
    entry = warm_teacher.cache.entry_path(warm_teacher.cache.key(view))
    entry.write_bytes(b"not a safetensors file")
    rebuilt = CachedTeacher(teacher, tmp_path / "cache")
    assert torch.equal(rebuilt.view_feature_map(view).features, cold.features)
    assert rebuilt.cache.stats.rebuilt == 1 and rebuilt.cache.stats.computed == 1


def test_read_only_cache_never_runs_the_teacher(skitti, tmp_path) -> None:
    teacher = tiny_teacher(resolution=28)
    with pytest.raises(ValueError, match="fill it first"):
        CachedTeacher(teacher, tmp_path / "empty", read_only=True)
    views = [s.cameras[0] for s in open_source(skitti)]
    CachedTeacher(teacher, tmp_path / "cache").view_feature_map(views[0])
    reader = CachedTeacher(teacher, tmp_path / "cache", read_only=True)
    reader.view_feature_map(views[0])
    before = teacher.forward_count
    with pytest.raises(ValueError, match="no entry for camera"):
        reader.view_feature_map(views[1])
    assert teacher.forward_count == before


def test_two_training_runs_on_one_cache_train_identically_without_a_teacher_forward(skitti, tmp_path,
                                                                                     monkeypatch) -> None:
    args = ["--data", skitti, "--val-scans", "0", "--teacher", "tiny", "--teacher-resolution", "28", "--epochs", "2",
            "--crop-points", "0", "--no-progress", "--threads", "1", "--cache", str(tmp_path / "cache")]
    assert train_tool.main([*args, "--out", str(tmp_path / "a")]) == 0
    files = _tree_digest(tmp_path / "cache")
    forwards = []
    real_compute = type(tiny_teacher())._compute

    def counting(self, image):
        forwards.append(image.shape)
        return real_compute(self, image)

    monkeypatch.setattr(type(tiny_teacher()), "_compute", counting)
    assert train_tool.main([*args, "--out", str(tmp_path / "b"), "--workers", "1"]) == 0
    assert forwards == [] and _tree_digest(tmp_path / "cache") == files
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    from safetensors.torch import load

    wa, wb = load(a), load(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert np.isfinite(json.loads((tmp_path / "b" / "history.jsonl").read_text().splitlines()[-1])["loss"])
