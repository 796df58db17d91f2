"""Train one epoch and evaluate on every real on-disk layout, through the console commands' entry points.

Each layout is a tiny tree written by the test (SemanticKITTI with image_2 and calib, nuScenes with lidarseg,
ScanNet SensReader frames, a labeled rosbag2); the teacher is the random tiny DINOv2 (no weights here).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from layout_bag import write_bag
from layout_nuscenes import write_nuscenes_tree
from layout_scannet import write_scannet_root
from layout_semantickitti import write_semantickitti

from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata
from ttt_kd_ros.labels import get_label_set
from ttt_kd_ros.tools import evaluate as evaluate_tool
from ttt_kd_ros.tools import train as train_tool

TINY_TRAIN = ["--teacher", "tiny", "--teacher-resolution", "28", "--epochs", "1", "--batch-scans", "2",
              "--crop-points", "0", "--threads", "1", "--no-progress", "--kd-points", "256"]


def _semantickitti(tmp: Path) -> tuple[str, str]:
    root = write_semantickitti(tmp / "skitti", {"00": 3, "08": 2}, points=500)
    return f"semantickitti:{root}?sequences=00", f"semantickitti:{root}?sequences=08"


def _nuscenes(tmp: Path) -> tuple[str, str]:
    write_nuscenes_tree(tmp / "nusc")
    return f"nuscenes:{tmp / 'nusc'}?version=v1.0-mini&split=mini_train", \
        f"nuscenes:{tmp / 'nusc'}?version=v1.0-mini&split=mini_val"


def _scannet(tmp: Path) -> tuple[str, str]:
    root = write_scannet_root(tmp / "scannet")
    return f"scannet:{root}?scenes=scene0000_00", f"scannet:{root}?scenes=scene0001_00"


def _bag(tmp: Path) -> tuple[str, str]:
    bag = write_bag(tmp / "robot_bag")
    spec = f"bag:{bag}?label_set=scannet20&scan_cache={tmp / 'bag_scans'}"
    return spec, spec


LAYOUTS = {"semantickitti": (_semantickitti, "semantic_kitti19"), "nuscenes": (_nuscenes, "semantic_kitti19"),
           "scannet": (_scannet, "scannet20"), "bag": (_bag, "scannet20")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_train_one_epoch_then_evaluate_on_a_real_layout(layout: str, tmp_path: Path) -> None:
    write, label_set = LAYOUTS[layout]
    train_spec, val_spec = write(tmp_path)
    run = tmp_path / "run"
    assert train_tool.main(["--data", train_spec, "--val", val_spec, "--val-scans", "2", "--out", str(run),
                            *TINY_TRAIN]) == 0
    meta = read_checkpoint_metadata(run / "model.safetensors")
    assert meta["config"]["label_set"] == label_set
    assert meta["config"]["num_classes"] == get_label_set(label_set).num_classes
    assert meta["extra"]["data"] == train_spec and meta["extra"]["skipped_scans"] == {}
    assert meta["config"]["fusion_head"] and meta["extra"]["fusion_head"]["points"] > 0  # rho_F fitted after training
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["kd_points"] > 0 and np.isfinite(history[0]["val_miou"])
    assert (run / "curves.png").stat().st_size > 1000 and "epoch 0" in (run / "train.log").read_text()

    out = tmp_path / "eval"
    assert evaluate_tool.main(["--out", str(out), "--checkpoint", str(run / "model.safetensors"), "--teacher", "tiny",
                               "--strategies", "joint_train,ttt_kd", "--split", f"train={train_spec}",
                               "--split", f"val={val_spec}", "--scans", "2", "--steps", "2", "--curve-scans", "0",
                               "--threads", "1", "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    cells = {(r["strategy"], r["split"]): r for r in results["results"]}
    assert set(cells) == {(s, p) for s in ("joint_train", "ttt_kd") for p in ("train", "val")}
    assert all(np.isfinite(r["miou"]) and sum(map(sum, r["confusion"])) > 0 for r in cells.values())
    assert all(steps == 2 for steps in cells[("ttt_kd", "val")]["steps_run"])


def test_a_corrupt_scan_is_a_counted_skip_and_the_run_goes_on(tmp_path: Path) -> None:
    root = write_semantickitti(tmp_path / "skitti", {"00": 4}, points=300)
    bad = root / "sequences/00/velodyne/000002.bin"
    bad.write_bytes(bad.read_bytes()[:-6])  # not a whole number of points
    (root / "sequences/00/velodyne/000003.bin").write_bytes(b"")  # an empty scan ...
    (root / "sequences/00/labels/000003.label").write_bytes(b"")  # ... with its (empty) labels
    run = tmp_path / "run"
    assert train_tool.main(["--data", f"semantickitti:{root}", "--val-scans", "0", "--out", str(run),
                            *TINY_TRAIN]) == 0
    meta = read_checkpoint_metadata(run / "model.safetensors")
    assert meta["extra"]["skipped_scans"] == {"ValueError": 2}
    log = (run / "train.log").read_text()
    assert "skipping" in log and "000002.bin" in log and "empty scan" in log
    assert "2 scans train, 2 skipped" in log


def test_training_a_model_of_another_label_set_maps_the_labels_through_the_bridge(tmp_path: Path) -> None:
    train_spec, _ = _scannet(tmp_path)
    run = tmp_path / "run"
    assert train_tool.main(["--data", train_spec, "--label-set", "synthetic_indoor", "--val-scans", "0",
                            "--out", str(run), *TINY_TRAIN]) == 0
    model = load_checkpoint(run / "model.safetensors")
    assert model.config.label_set == "synthetic_indoor" and model.config.num_classes == 11
    # Evaluating the synthetic-indoor model on ScanNet scores the shared classes only, and says so.
    out = tmp_path / "eval"
    assert evaluate_tool.main(["--out", str(out), "--checkpoint", str(run / "model.safetensors"),
                               "--strategies", "joint_train", "--split", "source",
                               "--split", f"scannet={train_spec}", "--scans", "1", "--curve-scans", "0",
                               "--max-points", "3000", "--threads", "1", "-q"]) == 0
    results = json.loads((out / "results.json").read_text())
    scannet = next(r for r in results["results"] if r["split"] == "scannet")
    source = next(r for r in results["results"] if r["split"] == "source")
    assert set(scannet["per_class_iou"]) == {"floor", "wall", "table", "chair", "sofa", "bed", "cabinet", "door",
                                             "window"}
    assert len(source["per_class_iou"]) == 11
    assert "scored on the 9 classes both share" in (out / "table.md").read_text()


def test_ttt_kd_train_console_command_trains_on_semantickitti(tmp_path: Path) -> None:
    train_spec, _ = _semantickitti(tmp_path)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "ttt_kd_ros.tools.train", "--data", train_spec, "--val-scans", "0",
                           "--out", str(run), *TINY_TRAIN], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "model.safetensors").is_file() and "model written to" in done.stdout


def test_fine_tuning_starts_from_a_checkpoint_and_keeps_its_classes(tmp_path: Path) -> None:
    """A model of one data set fine-tuned on a recording: --init keeps its network, label set and target centre."""
    train_spec, _ = _scannet(tmp_path)
    base = tmp_path / "base"
    assert train_tool.main(["--data", train_spec, "--val-scans", "0", "--out", str(base), *TINY_TRAIN]) == 0
    bag_spec, _ = _bag(tmp_path)
    tuned = tmp_path / "tuned"
    assert train_tool.main(["--data", bag_spec, "--init", str(base / "model.safetensors"), "--val-scans", "0",
                            "--out", str(tuned), *TINY_TRAIN]) == 0
    before, after = load_checkpoint(base / "model.safetensors"), load_checkpoint(tuned / "model.safetensors")
    assert after.config.kd_target_center == before.config.kd_target_center
    assert after.config.label_set == "scannet20"
    assert after.fusion_head is not None and not torch.equal(after.fusion_head.weight, before.fusion_head.weight)
    moved = [k for k, v in after.state_dict().items()
             if v.is_floating_point() and not v.equal(before.state_dict()[k])]
    assert any(k.startswith("backbone.") for k in moved)
    assert read_checkpoint_metadata(tuned / "model.safetensors")["extra"]["init"] == str(base / "model.safetensors")
    with pytest.raises(SystemExit):  # another teacher than the checkpoint's: refused
        train_tool.main(["--data", bag_spec, "--init", str(base / "model.safetensors"), "--teacher", "random-vits14",
                         "--val-scans", "0", "--out", str(tmp_path / "bad"), "--epochs", "1", "--no-progress"])


@pytest.mark.parametrize("variant", ["no image_2", "cameras=false"])
def test_joint_training_without_cameras_is_a_usage_error_before_any_scan_is_read(
        variant: str, tmp_path: Path, monkeypatch, capsys) -> None:
    from ttt_kd_ros.data.sources import SemanticKittiSource

    root = write_semantickitti(tmp_path / "skitti", {"00": 2}, points=300, images=variant != "no image_2")
    spec = f"semantickitti:{root}" + ("?cameras=false" if variant == "cameras=false" else "")
    monkeypatch.setattr(SemanticKittiSource, "load", lambda self, i: pytest.fail("a scan was read"))
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main(["--data", spec, "--val-scans", "0", "--out", str(tmp_path / "run"), *TINY_TRAIN])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no camera image" in err and "--source-only" in err and "image_2/ and calib.txt" in err


@pytest.mark.parametrize("how", ["--label-set", "--init"])
def test_a_label_set_with_no_bridge_is_a_usage_error_naming_the_fix(how: str, tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    """SemanticKITTI scans cannot train an indoor model (no shared classes): said before any scan is read."""
    from ttt_kd_ros.data.sources import SemanticKittiSource

    train_spec, _ = _semantickitti(tmp_path)
    extra = ["--label-set", "scannet20"]
    if how == "--init":
        scannet_spec, _ = _scannet(tmp_path)
        assert train_tool.main(["--data", scannet_spec, "--val-scans", "0", "--out", str(tmp_path / "indoor"),
                                *TINY_TRAIN]) == 0
        extra = ["--init", str(tmp_path / "indoor" / "model.safetensors")]
    monkeypatch.setattr(SemanticKittiSource, "load", lambda self, i: pytest.fail("a scan was read"))
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main(["--data", train_spec, *extra, "--val-scans", "0", "--out", str(tmp_path / "run"),
                         *TINY_TRAIN])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "labelled in 'semantic_kitti19'" in err and "--label-set semantic_kitti19" in err
    assert ("the --init model's classes are 'scannet20'" in err) == (how == "--init")


def test_evaluating_an_unlabeled_or_missing_source_is_a_clear_usage_error(tmp_path: Path, capsys) -> None:
    root = write_semantickitti(tmp_path / "test_seq", {"11": 2}, labels=False)
    args = ["--out", str(tmp_path / "eval"), "--strategies", "joint_train", "--curve-scans", "0", "--scans", "1"]
    with pytest.raises(SystemExit):
        evaluate_tool.main([*args, "--split", "source", "--split", f"k11=semantickitti:{root}"])
    assert "has no labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_tool.main([*args, "--split", "source", "--split", f"gone=semantickitti:{tmp_path / 'gone'}"])
    assert "not found" in capsys.readouterr().err


def test_synthetic_training_validates_on_unseen_rooms_of_its_own_domain() -> None:
    args = train_tool.build_parser().parse_args(["--out", "unused", "--data", "synthetic:office?scans=3&seed=5",
                                                 "--val-scans", "2"])
    data, val = train_tool.open_data(args)
    assert data.domain.name == "office" and data.seed == 5 and len(data) == 3
    assert val.domain.name == "office" and val.seed == 5 + train_tool.VAL_SEED_OFFSET and len(val) == 2
    default_data, default_val = train_tool.open_data(train_tool.build_parser().parse_args(
        ["--out", "unused", "--scans", "4", "--seed", "2"]))
    assert (default_data.domain.name, default_data.seed, len(default_data)) == ("source", 2, 4)
    assert default_val.seed == 2 + train_tool.VAL_SEED_OFFSET


def _doc_commands(section: str, start: str) -> list[list[str]]:
    """The shell commands of the code block after ``start`` in docs/TRAINING.md ``section``, continuations joined."""
    text = (REPO_ROOT / "docs" / "TRAINING.md").read_text()
    body = text[text.index(section):]
    lines = body[body.index(start):].splitlines()[1:]
    block = []
    for line in lines:
        if not line.strip() and block:
            break
        if line.startswith("    "):
            block.append(line.strip())
    return [shlex.split(part) for part in _split_commands(" ".join(block).replace("\\ ", ""))]


def _split_commands(joined: str) -> list[str]:
    """Split a joined block into its commands: at `;` and before each command name."""
    parts = []
    for chunk in joined.split(";"):
        for name in ("ttt_kd_cache_features", "torchrun", "ttt_kd_evaluate"):
            chunk = chunk.replace(f" {name} ", f"\n{name} ")
        parts.extend(p.strip() for p in chunk.split("\n") if p.strip())
    return parts


def _small(args: list[str], sizes: dict[str, str]) -> list[str]:
    """The same command with this machine's sizes: the flags in ``sizes`` take the given values."""
    out = list(args)
    for flag, value in sizes.items():
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


@pytest.mark.slow
def test_training_md_2b_semantickitti_commands_run_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    """docs/TRAINING.md 2b, SemanticKITTI: cache features, joint + source-only training, then the evaluation that
    reads the same cache (it once refused it: training recorded one image's (H, W), not the resolution given).

    The commands are read from the document; only sizes change (1 epoch, ttt_kd_small, a handful of scans, the
    CPU, no torchrun) and the paths point at a tiny SemanticKITTI tree, a tiny nuScenes tree and a DINOv2-shaped
    folder of random weights.
    """
    from layout_nuscenes import write_nuscenes_tree

    from ttt_kd_ros.teachers.weights import tiny_teacher
    from ttt_kd_ros.tools import cache_features

    data = write_semantickitti(tmp_path / "skitti", {f"{s:02d}": 1 for s in range(11)}, points=300)
    nuscenes = tmp_path / "nusc"
    write_nuscenes_tree(nuscenes)
    teacher = tmp_path / "dinov2-small"
    tiny_teacher(seed=5).model.save_pretrained(teacher)
    monkeypatch.chdir(tmp_path)
    commands = _doc_commands("## 2b.", "**SemanticKITTI**")
    assert [c[0] for c in commands] == ["DATA=/data/semantickitti/dataset", "CACHE=/data/cache/skitti_dinov2s_224",
                                        "T=/models/dinov2-small", "ttt_kd_cache_features", "torchrun", "torchrun",
                                        "ttt_kd_evaluate"]
    variables = {"$DATA": str(data), "$CACHE": str(tmp_path / "cache"), "$T": str(teacher),
                 "/data/nuscenes?split=val": f"{nuscenes}?version=v1.0-mini&split=mini_val"}

    def filled(args: list[str]) -> list[str]:
        out = []
        for arg in args:
            for name, value in variables.items():
                arg = arg.replace(name, value)
            out.append(arg)
        return out

    cache_args = filled(commands[3][1:])
    assert cache_features.main([*_small(cache_args, {"--device": "cpu", "--teacher-resolution": "28"}),
                                "--no-progress"]) == 0
    train_args = filled(commands[4][commands[4].index("-m") + 2:])
    sizes = {"--val-scans": "1", "--preset": "ttt_kd_small", "--epochs": "1", "--workers": "0",
             "--teacher-resolution": "28"}
    assert train_tool.main([*_small(train_args, sizes), "--threads", "1", "--no-progress"]) == 0
    same = commands[5][commands[5].index("...same...") + 1:]
    source_only = [a for a in _small(train_args, sizes) if a not in ("--lambda-kd", "0.3")]
    source_only = [*source_only[:source_only.index("--out")], *filled(same), "--threads", "1", "--no-progress"]
    assert train_tool.main(source_only) == 0
    evaluate_args = _small(filled(commands[6][1:]), {"--scans": "1", "--device": "cpu"})
    assert "--teacher-resolution" not in evaluate_args  # the checkpoint's recorded resolution is what binds the cache
    assert evaluate_tool.main([*evaluate_args, "--steps", "1", "--curve-scans", "0", "--threads", "1", "-q"]) == 0
    results = json.loads((tmp_path / "runs" / "eval_skitti" / "results.json").read_text())
    assert {r["split"] for r in results["results"]} >= {"skitti08", "nuscenes_val"}
    assert read_checkpoint_metadata(tmp_path / "runs" / "skitti_joint" / "model.safetensors")[
        "teacher_resolution"] == 28


def test_ttt_kd_train_device_cuda_without_cuda_is_a_usage_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main(["--data", "synthetic:source?scans=1", "--device", "cuda", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch sees no CUDA device" in err and "Config" not in err


def test_init_takes_the_shipped_model_by_the_name_the_node_uses(tmp_path: Path) -> None:
    """--init builtin:lidar fine-tunes the shipped LiDAR model (with its own teacher, the stand-in)."""
    run = tmp_path / "run"
    assert train_tool.main(["--data", "synthetic:lidar?scans=2", "--init", "builtin:lidar", "--teacher", "builtin",
                            "--val-scans", "0", "--epochs", "1", "--batch-scans", "2", "--crop-points", "2000",
                            "--threads", "1", "--no-progress", "--kd-points", "256", "--fusion-head-scans", "0",
                            "--out", str(run)]) == 0
    meta = read_checkpoint_metadata(run / "model.safetensors")
    assert meta["extra"]["init"].endswith("ttt_kd_small_synthetic_lidar.safetensors")
    assert meta["config"]["label_set"] == "synthetic_indoor"


def test_in_training_validation_shows_progress(tmp_path: Path, capsys) -> None:
    from ttt_kd_ros.data.synthetic import generate_scan
    from ttt_kd_ros.training.loop import evaluate_miou

    model = load_checkpoint(train_tool.resolve_builtin("builtin"), "cpu")
    evaluate_miou(model, [generate_scan("source", 0)], torch.device("cpu"), progress=True)
    assert "validation" in capsys.readouterr().err
