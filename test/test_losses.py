"""KD and entropy losses: values on cases with known answers, gradients, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from ttt_kd_ros.losses import KD_LOSS_KINDS, entropy_loss, kd_loss


@pytest.mark.parametrize("kind", KD_LOSS_KINDS)
def test_kd_loss_zero_for_same_direction(kind: str) -> None:
    target = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert kd_loss(3.0 * target, target, kind).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_cosine_values_for_orthogonal_and_opposite() -> None:
    eye = torch.eye(4)
    assert kd_loss(eye, eye.roll(1, dims=0)).item() == pytest.approx(1.0)
    assert kd_loss(eye, -eye).item() == pytest.approx(2.0)


def test_kd_loss_l2_is_twice_cosine_on_unit_vectors() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(32, 6, generator=g), torch.randn(32, 6, generator=g)
    assert kd_loss(pred, target, "l2").item() == pytest.approx(2 * kd_loss(pred, target, "cosine").item(), rel=1e-5)


@pytest.mark.parametrize("kind", KD_LOSS_KINDS)
def test_kd_loss_gradient_descent_lowers_loss(kind: str) -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(10, 5, generator=g, requires_grad=True)
    target = torch.randn(10, 5, generator=g)
    before = kd_loss(pred, target, kind)
    before.backward()
    with torch.no_grad():
        after = kd_loss(pred - 0.5 * pred.grad, target, kind)
    assert after.item() < before.item()


def test_kd_loss_rejects_shape_mismatch_and_empty_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"\(M, D\)"):
        kd_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="M = 0"):
        kd_loss(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="huber"):
        kd_loss(torch.ones(2, 2), torch.ones(2, 2), "huber")


def test_entropy_loss_uniform_is_log_k_and_confident_is_near_zero() -> None:
    assert entropy_loss(torch.zeros(5, 7)).item() == pytest.approx(math.log(7))
    confident = torch.tensor([[1000.0, 0.0, 0.0]])
    value = entropy_loss(confident)
    assert torch.isfinite(value) and value.item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_loss_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="entropy_loss"):
        entropy_loss(torch.zeros(5))
