"""ttt_kd_evaluate: end to end on tiny checkpoints, table numbers vs a direct ConfusionMatrix, gains, specs, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.checkpoint_format import load_checkpoint, save_checkpoint
from ttt_kd_ros.evaluation.evaluator import OnlineStream, SplitResult, StepsCurve, window_miou
from ttt_kd_ros.evaluation.report import online_summary, relative_gain, table_rows
from ttt_kd_ros.evaluation.splits import generate_split, parse_split
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.segmenter import Segmenter
from ttt_kd_ros.teachers.weights import tiny_teacher
from ttt_kd_ros.tools.evaluate import main

SMALL_CAMERA = "sensor.num_cameras=1,sensor.image_width_px=40,sensor.image_height_px=30"
ID_SPEC = f"src=source:sensor.num_views=1,{SMALL_CAMERA},sensor.max_points=300"
OFFICE_SPEC = f"off=office:sensor.num_views=1,{SMALL_CAMERA},sensor.max_points=300"
LIDAR_SPEC = f"li=lidar:sensor.rings=6,sensor.horizontal_res_deg=4,{SMALL_CAMERA}"


def _tiny_net(seed: int) -> TTTKDNet:
    torch.manual_seed(seed)
    config = net_config("ttt_kd_small", teacher_dim=32, teacher_resolution=(28, 28), kd_hidden=8,
                        encoder_planes=(4, 8), encoder_blocks=(0, 1), decoder_planes=(8,), decoder_blocks=(1,),
                        voxel_size_m=0.1)
    return TTTKDNet(config)


def _segmenter(model: TTTKDNet, config: AdaptConfig) -> Segmenter:
    return Segmenter(model, tiny_teacher(resolution=(28, 28)), build_strategy(model, config))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {"joint": save_checkpoint(_tiny_net(0), folder / "joint.safetensors"),
            "source": save_checkpoint(_tiny_net(1), folder / "source.safetensors")}


def _base_args(checkpoints: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--checkpoint", str(checkpoints["joint"]), "--source-only-checkpoint",
            str(checkpoints["source"]), "--teacher", "tiny", "--scans", "2", "--in-distribution", ID_SPEC, "-q",
            *extra]


@pytest.mark.slow
def test_main_writes_table_json_and_plots(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = _base_args(checkpoints, out, "--shift", OFFICE_SPEC, "--shift", LIDAR_SPEC, "--steps", "2",
                      "--curve-steps", "0,1,2", "--curve-scans", "1", "--online-scans", "3", "--online-window", "2")
    assert main(args) == 0
    table = (out / "table.md").read_text()
    for label in ("Source-only", "Joint-train", "BN-stats", "TENT", "TTT-KD-O", "TTT-KD (per scan)"):
        assert label in table
    assert "random control" in table and "| off | li |" in table
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"]["kind"].startswith("random control")
    assert {(r["strategy"], r["split"]) for r in results["results"]} == {
        (s, sp) for s in ("source_only", "joint_train", "bn_stats", "tent", "ttt_kd_online", "ttt_kd")
        for sp in ("src", "off", "li")}
    record = results["results"][0]
    assert set(record["per_class_iou"]) == set(results["results"][1]["per_class_iou"])
    assert len(record["per_class_iou"]) == 11 and len(record["scan_miou"]) == 2
    ttt = next(r for r in results["results"] if r["strategy"] == "ttt_kd")
    assert ttt["steps_run"] == [2, 2] and ttt["seconds_per_scan"] > 0
    curve = json.loads((out / "steps_curve.json").read_text())["curve"]
    assert set(curve) == {"src", "off", "li", "mean"} and set(curve["mean"]) == {"0", "1", "2"}
    online = json.loads((out / "online.json").read_text())["online"]
    assert online["split"] == "off" and online["scans"] == 3 and len(online["window_miou_online"]) == 2
    for png in ("miou_bars.png", "steps_curve.png", "online.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 200 and image.size[1] > 100


def test_table_miou_equals_direct_confusion_matrix(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = _base_args(checkpoints, out, "--strategies", "joint_train", "--shift", OFFICE_SPEC, "--curve-scans", "0",
                      "--seed", "5")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    model = load_checkpoint(checkpoints["joint"])
    for split_spec, name in ((ID_SPEC, "src"), (OFFICE_SPEC, "off")):
        cm = ConfusionMatrix(model.config.num_classes)
        for scan in generate_split(parse_split(split_spec), 2, base_seed=5).scans:
            with torch.no_grad():
                labels = model(model.prepare(scan), with_kd=False).logits.argmax(dim=1).numpy()
            cm.update(scan.labels, labels)
        record = next(r for r in results["results"] if r["split"] == name)
        assert record["miou"] == pytest.approx(cm.miou(), abs=1e-12)
        assert np.array_equal(np.array(record["confusion"]), cm.counts)
        row = results["table"][0]
        shown = row["in_distribution_miou"] if name == "src" else row["shift_miou"][name]
        assert shown == pytest.approx(cm.miou(), abs=1e-12)
        assert f"{100 * cm.miou():.1f}" in (out / "table.md").read_text()


def _result(strategy: str, split: str, correct: int, wrong: int) -> SplitResult:
    """Two classes; class 0 always right, ``wrong`` of class 1's points predicted as 0."""
    cm = ConfusionMatrix(2)
    cm.update(np.array([0] * 10 + [1] * (correct + wrong)), np.array([0] * 10 + [1] * correct + [0] * wrong))
    return SplitResult(strategy, split, cm, seconds=[0.5])


def test_relative_gain_maths() -> None:
    assert relative_gain(0.55, 0.5) == pytest.approx(10.0)
    assert relative_gain(0.45, 0.5) == pytest.approx(-10.0)
    assert math.isnan(relative_gain(0.5, 0.0)) and math.isnan(relative_gain(float("nan"), 0.5))
    results = [_result("source_only", "id", 5, 5), _result("source_only", "a", 5, 5),
               _result("source_only", "b", 2, 8), _result("ttt_kd", "id", 8, 2), _result("ttt_kd", "a", 6, 4),
               _result("ttt_kd", "b", 4, 6)]
    rows = table_rows(results, "id", ["a", "b"])
    src, ttt = rows
    assert [r["strategy"] for r in rows] == ["source_only", "ttt_kd"]

    def miou(correct: int, wrong: int) -> float:  # by hand: IoU of class 0 and of class 1 (see _result)
        return (10 / (10 + wrong) + correct / (correct + wrong)) / 2

    assert src["in_distribution_miou"] == pytest.approx(miou(5, 5)) == pytest.approx(35 / 60)
    assert ttt["in_distribution_miou"] == pytest.approx(miou(8, 2)) == pytest.approx(49 / 60)
    assert ttt["shift_miou"] == pytest.approx({"a": miou(6, 4), "b": miou(4, 6)})
    assert src["gain_in_distribution_pct"] == pytest.approx(0.0)
    assert ttt["gain_in_distribution_pct"] == pytest.approx(40.0)  # (49 - 35) / 35
    per_shift = {"a": 100 * (miou(6, 4) / miou(5, 5) - 1), "b": 100 * (miou(4, 6) / miou(2, 8) - 1)}
    assert ttt["gain_per_shift_pct"] == pytest.approx(per_shift)
    assert ttt["gain_ood_pct"] == pytest.approx((per_shift["a"] + per_shift["b"]) / 2)
    ood, ood_source = (miou(6, 4) + miou(4, 6)) / 2, (miou(5, 5) + miou(2, 8)) / 2
    assert ttt["ood_average_miou"] == pytest.approx(ood)
    assert ttt["gain_ood_of_average_pct"] == pytest.approx(100 * (ood / ood_source - 1))
    assert ttt["seconds_per_scan"] == pytest.approx(0.5)


def test_parse_split_overrides_only_named_fields() -> None:
    split = parse_split("heavy=noisy:sensor.dropout=0.6,sensor.camera_height_m=[1.0,1.1],style.texture_strength=0")
    base = parse_split("noisy")
    assert split.name == "heavy" and split.domain.name == "heavy"
    assert split.domain.sensor.dropout == 0.6 and split.domain.sensor.camera_height_m == (1.0, 1.1)
    assert split.domain.style.texture_strength == 0.0 and isinstance(split.domain.style.texture_strength, float)
    assert split.domain.sensor.depth_noise_m == base.domain.sensor.depth_noise_m
    assert split.domain.sensor.max_points == base.domain.sensor.max_points


@pytest.mark.parametrize(("spec", "message"), [
    ("x=nowhere", "expected one of"),
    ("x=source:sensor.warp=3", "unknown field 'warp'"),
    ("x=source:sensor.max_points=abc", "expected a number"),
    ("x=source:sensor.max_points=1.5", "expected an integer"),
    ("x=source:lens.f=3", "sensor.<field>"),
    ("x=source:sensor.kind=sonar", "SensorConfig.kind"),
    ("bad name=source", "may only hold"),
])
def test_parse_split_bad_spec_raises(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_split(spec)
    assert message in str(err.value)


def test_main_selectable_shift_changes_the_data(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    shift = f"sparse=source:sensor.num_views=1,{SMALL_CAMERA},sensor.max_points=120,sensor.dropout=0.5"
    args = _base_args(checkpoints, out, "--strategies", "joint_train", "--shift", shift, "--curve-scans", "0")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["shifts"]] == ["sparse"] and results["shifts"][0]["spec"] == shift
    points = {s["name"]: s["mean_points"] for s in results["splits"]}
    assert points["sparse"] <= 120 < points["src"]
    assert "sparse" in (out / "table.md").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["--strategies", "joint_train,magic"], "unknown ['magic']"),
    (["--shift", "x=source:sensor.warp=1"], "unknown field 'warp'"),
    (["--scans", "0"], "--scans: expected >= 1"),
    (["--curve-steps", "0,a"], "--curve-steps"),
    (["--curve-splits", "nope"], "unknown split names"),
    (["--adapt", "tent:lr=-1"], "AdaptConfig.lr"),
    (["--adapt", "dance:lr=1"], "STRATEGY:FIELD=VALUE"),
    (["--source-only-checkpoint", "/nonexistent/x.safetensors"], "file not found"),
])
def test_main_bad_args_exit_with_clear_error(checkpoints: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], extra: list[str],
                                             message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(_base_args(checkpoints, tmp_path / "eval", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "eval" / "results.json").exists()


def test_segment_steps_in_pieces_equal_one_ttt_kd_run() -> None:
    scan = generate_split(parse_split(ID_SPEC), 1, base_seed=3).scans[0]
    config = AdaptConfig(strategy="ttt_kd", steps=3, lr=0.01, kd_points_per_step=64)
    direct = _segmenter(_tiny_net(0), config)
    want = direct.segment(scan)
    pieces = _segmenter(_tiny_net(0), config).segment_steps(scan, [0, 1, 3])
    assert [p.steps_run for p in pieces] == [0, 1, 3]
    assert np.array_equal(pieces[-1].labels, want.labels)
    assert pieces[-1].kd_loss_after == pytest.approx(want.kd_loss_after, abs=1e-6)
    assert pieces[0].kd_loss_after is None  # no step ran: no "after"; the unadapted loss is kd_loss_before
    assert pieces[0].kd_loss_before > pieces[-1].kd_loss_after
    unadapted = _segmenter(_tiny_net(0), AdaptConfig(strategy="none")).segment(scan)
    assert np.array_equal(pieces[0].labels, unadapted.labels)


def test_main_named_rows_run_with_their_own_settings(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rows"
    assert main(_base_args(checkpoints, out, "--strategies", "joint_train,ttt_kd", "--steps", "2",
                           "--row", "kd_only=ttt_kd:bn_train=false", "--row", "one_step=ttt_kd:steps=1,lr=1e-8",
                           "--curve-scans", "0")) == 0
    results = json.loads((out / "results.json").read_text())
    steps = {r["strategy"]: r["steps_run"] for r in results["results"] if r["split"] == "src"}
    assert steps == {"joint_train": [0, 0], "ttt_kd": [2, 2], "kd_only": [2, 2], "one_step": [1, 1]}
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["kd_only"]["adapt"]["bn_train"] is False and rows["kd_only"]["adapt"]["steps"] == 2
    assert rows["one_step"]["adapt"]["lr"] == 1e-8 and rows["ttt_kd"]["adapt"] is None
    table = (out / "table.md").read_text()
    assert "kd_only (ttt_kd: bn_train=false)" in table and "gain of OOD avg" in table


@pytest.mark.parametrize("text, message", [("nameonly", "NAME=STRATEGY"), ("x=dance", "NAME=STRATEGY"),
                                           ("ttt_kd=ttt_kd", "already used"), ("y=ttt_kd:lr=-1", "lr")])
def test_main_named_row_errors_are_clear(checkpoints: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    with pytest.raises(SystemExit):
        main(_base_args(checkpoints, tmp_path / "bad", "--row", text))
    assert message in capsys.readouterr().err


def test_main_oracle_teacher_runs_table_and_curve(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "oracle"
    args = _base_args(checkpoints, out, "--strategies", "joint_train,ttt_kd", "--steps", "1", "--curve-steps",
                      "0,1", "--curve-scans", "1", "--shift", OFFICE_SPEC)
    args[args.index("tiny")] = "oracle:dim=32"
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"]["kind"].startswith("oracle control")
    assert results["teacher"]["id"].startswith("oracle:dim=32")
    curve = json.loads((out / "steps_curve.json").read_text())
    kd_loss = curve["kd_loss"]
    assert set(kd_loss["src"]) == set(kd_loss["off"]) == {"0", "1"}
    # each split's unadapted (0-step) loss over the in-distribution split's
    assert curve["kd_loss_ratio_unadapted"] == pytest.approx({"src": 1.0,
                                                               "off": kd_loss["off"]["0"] / kd_loss["src"]["0"]})
    assert kd_loss["off"]["0"] != kd_loss["src"]["0"]


def test_kd_ratio_at_zero_divides_each_splits_unadapted_loss_by_the_in_distribution_one() -> None:
    curve = StepsCurve(miou={}, kd_loss={"src": {0: 0.4, 2: 0.1}, "off": {0: 0.6, 2: 0.3}, "li": {2: 0.5},
                                         "mean": {0: 0.5}})
    ratios = curve.kd_ratio_at_zero("src")
    assert set(ratios) == {"src", "off", "li"}  # "mean" is not a split
    assert ratios["src"] == pytest.approx(1.0) and ratios["off"] == pytest.approx(1.5) and math.isnan(ratios["li"])
    assert math.isnan(StepsCurve(miou={}, kd_loss={"off": {0: 0.6}}).kd_ratio_at_zero("src")["off"])


def test_pool_adds_confusions_of_runs_on_other_seeds(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    runs = []
    for seed in ("11", "12"):
        runs.append(tmp_path / f"seed{seed}")
        assert main(_base_args(checkpoints, runs[-1], "--strategies", "source_only,joint_train", "--seed", seed,
                               "--curve-scans", "0")) == 0
    assert main(["--out", str(tmp_path / "pooled"), "--pool", *map(str, runs)]) == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    single = [json.loads((r / "results.json").read_text()) for r in runs]
    for record in pooled["results"]:
        parts = [next(x for x in s["results"] if (x["strategy"], x["split"]) == (record["strategy"], record["split"]))
                 for s in single]
        assert np.array_equal(np.array(record["confusion"]), sum(np.array(p["confusion"]) for p in parts))
        assert len(record["scan_miou"]) == 4
    assert pooled["scans_per_split"] == 4 and "seeds 11, 12" in (tmp_path / "pooled" / "table.md").read_text()


def test_pool_refuses_runs_of_other_rows(checkpoints: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_base_args(checkpoints, a, "--strategies", "joint_train", "--curve-scans", "0")) == 0
    assert main(_base_args(checkpoints, b, "--strategies", "source_only", "--curve-scans", "0")) == 0
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "p"), "--pool", str(a), str(b)])
    assert "differs" in capsys.readouterr().err


def test_window_miou_sums_consecutive_scans() -> None:
    perfect = np.diag([5, 5])
    swapped = np.array([[0, 5], [5, 0]])
    values = window_miou([perfect, perfect, swapped, swapped], window=2)
    assert values == pytest.approx([1.0, 0.5 * (5 / 15 + 5 / 15), 0.0])
    with pytest.raises(ValueError, match="window"):
        window_miou([perfect], window=0)


def test_online_summary_flags_collapse_and_counts_resets() -> None:
    good, bad = np.diag([5, 5]), np.array([[0, 5], [5, 0]])
    healthy = OnlineStream("s", [good] * 4, [good] * 4, [0, 0, 1, 1], [0.3] * 4, [0.1] * 4)
    drifted = OnlineStream("s", [good, good, bad, bad], [good] * 4, [0, 0, 0, 0], [0.3] * 4, [0.1] * 4)
    ok = online_summary(healthy, window=2)
    assert not ok["collapsed"] and ok["resets"] == 1 and ok["miou_online"] == pytest.approx(1.0)
    assert online_summary(drifted, window=2)["collapsed"]


def test_main_runs_the_fusion_rows_and_the_checkpoints_default_with_coverage(tmp_path: Path) -> None:
    model = _tiny_net(0)
    config = dataclasses.replace(model.config, fusion_head=True)
    joint = TTTKDNet(config)
    joint.load_state_dict({**model.state_dict(), **{f"fusion_head.{k}": v for k, v in
                                                    torch.nn.Linear(32, config.num_classes).state_dict().items()}})
    validated = {"adapt": {"strategy": "ttt_kd", "steps": 1, "lr": 1e-3, "guard_kd_ratio": 0.9},
                 "fusion": {"mode": "mean", "weight_2d": 0.3}}
    folder = tmp_path / "ckpt"
    checkpoints = {"joint": save_checkpoint(joint, folder / "joint.safetensors", validated=validated),
                   "source": save_checkpoint(_tiny_net(1), folder / "source.safetensors")}
    out = tmp_path / "fusion"
    assert main(_base_args(checkpoints, out, "--strategies", "joint_train,teacher_projection,fusion_only,default",
                           "--shift", OFFICE_SPEC, "--curve-scans", "0", "--steps", "3")) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["default"]["adapt"]["steps"] == 1 and rows["default"]["adapt"]["guard_kd_ratio"] == 0.9
    by = {(r["strategy"], r["split"]): r for r in results["results"]}
    assert by[("default", "src")]["steps_run"] == [1, 1]
    for name in ("teacher_projection", "fusion_only", "default"):
        record = by[(name, "src")]
        assert all(0 < c <= 1 for c in record["coverage"])
        assert record["fused_share"] == pytest.approx(record["coverage"])  # fused exactly where a camera sees
    assert by[("joint_train", "src")]["fused_share"] == []
    table = (out / "table.md").read_text()
    assert "Teacher projection" in table and "Default output" in table and "Coverage" in table


def test_main_refuses_fusion_rows_for_a_checkpoint_without_a_head(checkpoints: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(_base_args(checkpoints, tmp_path / "x", "--strategies", "teacher_projection", "--curve-scans", "0"))


def test_checkpoint_builtin_names_resolve_as_in_the_node(tmp_path: Path) -> None:
    """``--checkpoint builtin:lidar`` (the node's spelling) is the shipped LiDAR model with its fusion head and
    validated settings, so its fusion and default rows run instead of being refused as 'no fusion head'."""
    from ttt_kd_ros.checkpoints import default_checkpoint
    from ttt_kd_ros.fusion import FusionConfig
    from ttt_kd_ros.tools.evaluate import Evaluation, build_parser

    argv = ["--out", str(tmp_path / "e"), "--checkpoint", "builtin:lidar", "--strategies", "fusion_only,default",
            "--teacher", "tiny", "--scans", "1", "--in-distribution", ID_SPEC, "--curve-scans", "0"]
    evaluation = Evaluation(build_parser().parse_args(argv), argv)
    assert Path(evaluation.args.checkpoint) == default_checkpoint("lidar")
    assert [r.name for r in evaluation.rows] == ["fusion_only", "default"]
    # what the shipped LiDAR model carries (session 8: a share that falls as the teacher's features collapse;
    # session 10: the decoder's last stage alone adapts, on a frozen prefix)
    assert evaluation.rows[1].fusion == FusionConfig("geometric", 0.4, shift_slope_2d=0.75, shift_ref_2d=0.4766)
    assert evaluation.rows[1].config.guard_kd_max == pytest.approx(0.68)
    assert evaluation.rows[1].config.params == "decoder_last" and evaluation.rows[1].config.guard_kd_ratio == 0.8
    assert evaluation.rows[1].config.crop_voxels == 2000


def test_adapt_flags_win_over_the_checkpoints_validated_values_on_the_default_row(tmp_path: Path) -> None:
    """``--adapt ttt_kd:params=...`` is how a candidate setting is validated against the shipped one: the fields it
    names must reach the default row (the others stay the checkpoint's), as a node parameter the user set does."""
    from ttt_kd_ros.segmenter import checkpoint_settings, resolve_builtin
    from ttt_kd_ros.tools.evaluate import Evaluation, build_parser

    argv = ["--out", str(tmp_path / "e"), "--checkpoint", "builtin:lidar", "--strategies", "default",
            "--teacher", "tiny", "--scans", "1", "--in-distribution", ID_SPEC, "--curve-scans", "0",
            "--adapt", "ttt_kd:params=norm_decoder,lr=5e-4"]
    validated = checkpoint_settings(resolve_builtin("builtin:lidar")).adapt
    assert validated["params"] != "norm_decoder" and validated["lr"] != 5e-4  # else the test shows nothing
    row = Evaluation(build_parser().parse_args(argv), argv).rows[0]
    assert row.config.params == "norm_decoder" and row.config.lr == pytest.approx(5e-4)
    assert row.config.guard_kd_max == pytest.approx(validated["guard_kd_max"])  # the checkpoint's, not named
    shipped = Evaluation(build_parser().parse_args(argv[:-2]), argv[:-2]).rows[0]
    assert shipped.config.params == validated["params"] and shipped.config.lr == pytest.approx(validated["lr"])
