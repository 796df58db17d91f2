"""The sparse benchmark's kernel counts and its baseline mode (tiny nets, a few hundred points)."""

from __future__ import annotations

import pytest
import torch

from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.sparse import torch_backend
from ttt_kd_ros.tools.benchmark_sparse import AdaptStep, _profile, main, room_scan, with_conv_path


def _tiny_net() -> TTTKDNet:
    torch.manual_seed(0)
    return TTTKDNet(net_config("ttt_kd_small", teacher_dim=8, encoder_planes=(8, 16), encoder_blocks=(1, 1),
                               decoder_planes=(8,), decoder_blocks=(1,), kd_hidden=8))


def test_table_path_launches_far_fewer_sparse_conv_kernels_than_pairs() -> None:
    net = _tiny_net()
    prepared = net.prepare(room_scan(2000))
    in_convs = {}
    for path in ("pairs", "table"):
        step = AdaptStep.build(net, with_conv_path(prepared, path, None))
        step()  # warm-up: the tables are built in the first pass
        in_convs[path] = sum(_profile(phase, torch.device("cpu"))[1] for phase in (step.forward, step.backward))
    assert 0 < in_convs["table"] * 4 < in_convs["pairs"]


def test_main_times_a_baseline_backend_file_beside_this_one(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--scan", "room", "--points", "600", "--reps", "1", "--threads", "1", "--conv-path", "auto", "baseline",
          "--baseline-backend", torch_backend.__file__, "--count-kernels"])
    out = capsys.readouterr().out
    assert "conv path baseline" in out and "conv path     auto" in out
    assert out.count("in sparse convs") == 8  # three phases and the step, per path


def test_baseline_path_needs_a_file() -> None:
    net = _tiny_net()
    with pytest.raises(ValueError, match="--baseline-backend"):
        with_conv_path(net.prepare(room_scan(300)), "baseline", None)
