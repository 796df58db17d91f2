"""DDP joint training: two CPU processes (gloo) on different scans end with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ttt_kd_ros.scan import Scan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, scans: list[Scan], out_dir: str) -> None:
    import test_train  # the spawned interpreter has test/ on sys.path like pytest's

    from ttt_kd_ros.teachers.weights import tiny_teacher
    from ttt_kd_ros.training.loop import TrainConfig, init_distributed, train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        config = TrainConfig(epochs=1, lr=5e-3, batch_scans=2, kd_points=256, augment=None)
        # Different init seeds per rank: DDP must broadcast rank 0's weights before the first step.
        result = train(config, test_train.tiny_model(seed=rank), scans, tiny_teacher(), Path(out_dir) / "run", ctx,
                       progress=False)
        torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_train_ddp_two_cpu_ranks_end_identical(tmp_path, monkeypatch) -> None:
    import test_train

    test_dir = str(Path(test_train.__file__).parent)
    repo_dir = str(Path(test_dir).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([test_dir, repo_dir, os.environ.get("PYTHONPATH", "")]))
    scans = test_train.small_scans(4, points=800)
    initial = test_train.tiny_model(seed=0).state_dict()
    mp.spawn(_worker, args=(2, _free_port(), scans, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    changed = [k for k, v in rank0.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("kd_head.") for k in changed)
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_train_on_a_semantickitti_layout(tmp_path) -> None:
    """The console command under torchrun on a real on-disk layout: 2 CPU ranks (gloo), one shared feature cache."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from layout_semantickitti import write_semantickitti

    from ttt_kd_ros.checkpoint_format import read_checkpoint_metadata

    root = write_semantickitti(tmp_path / "skitti", {"00": 5}, points=400)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "ttt_kd_ros.tools.train", "--data", f"semantickitti:{root}",
               "--val-scans", "0", "--out", str(run), "--teacher", "tiny", "--teacher-resolution", "28",
               "--epochs", "1", "--batch-scans", "1", "--crop-points", "0", "--device", "cpu", "--threads", "1",
               "--no-progress"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_checkpoint_metadata(run / "model.safetensors")
    assert meta["extra"]["world_size"] == 2 and meta["extra"]["num_scans"] == 5
    history = meta["extra"]["history"]
    assert len(history) == 1 and history[0]["kd_points"] > 0
    # 5 scans over 2 ranks: shards of 3 and 2 (padded to 3) -> 3 steps of 1 scan per rank, every image cached once.
    assert "3 steps per epoch" in (run / "train.log").read_text()
    assert len(list((run / "feature_cache").rglob("*.safetensors"))) == 5
