"""Shared fixtures: where the real recordings are, and a quiet, small torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("TTT_KD_ROS_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real, or a skip saying where it was looked for."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real sensor recordings not found at {REAL_DATA} (set TTT_KD_ROS_REAL_DATA)")
    return REAL_DATA


def pytest_configure(config: pytest.Config) -> None:
    # Test tensors are tiny and the node tests run their own processes beside
    # this one: one torch thread avoids spin-waiting workers on a 2-core box
    # (measured: a tiny forward took 0.4 s with 2 threads under load, 2 ms with 1).
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request: pytest.FixtureRequest):
    """Every device the engine runs on: the CPU always, CUDA under the ``gpu`` marker (skipped where absent).

    Why one fixture: the engine, segmenter, adaptation and training tests take it, so ``pytest -m gpu`` on a
    machine with a GPU runs the whole path there, not one hand-picked test; tolerances are chosen to hold on both.
    """
    import torch

    return torch.device(request.param)


@pytest.fixture(params=[False, True], ids=["fp32", "bf16"])
def amp(request: pytest.FixtureRequest) -> bool:
    """Mixed precision off and on: bfloat16 autocast runs on a CPU too, so both dtype paths run in every CI."""
    return request.param
