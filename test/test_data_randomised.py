"""Randomised domains for the teacher's pre-training: deterministic, inside their ranges, beyond stays beyond."""

from __future__ import annotations

import colorsys

import numpy as np

from ttt_kd_ros.data.synthetic.randomised import BEYOND_TRAINING, TRAINING, random_domain
from ttt_kd_ros.data.synthetic.renders import render_labeled_images


def test_random_domain_is_deterministic_in_its_seed() -> None:
    assert random_domain(TRAINING, 5) == random_domain(TRAINING, 5)
    assert random_domain(TRAINING, 5) != random_domain(TRAINING, 6)


def test_random_domain_draws_inside_the_training_ranges() -> None:
    for seed in range(20):
        domain = random_domain(TRAINING, seed)
        assert TRAINING.hfov_deg[0] <= domain.sensor.hfov_deg <= TRAINING.hfov_deg[1]
        assert TRAINING.ambient[0] <= domain.style.ambient[0] <= TRAINING.ambient[1]
        for colours in domain.style.palette.values():
            for rgb in colours:
                _, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
                assert TRAINING.value[0] - 0.01 <= v <= TRAINING.value[1] + 0.01
                assert s <= TRAINING.saturation[1] + 0.02


def test_beyond_training_ranges_do_not_overlap_the_training_ones() -> None:
    for name in ("saturation", "ambient", "light_tint", "hfov_deg", "room_width_m", "image_noise"):
        low, high = getattr(TRAINING, name)
        beyond_low, beyond_high = getattr(BEYOND_TRAINING, name)
        assert beyond_low >= high or beyond_high <= low, name


def test_a_randomised_room_renders_labelled_views() -> None:
    views = render_labeled_images(random_domain(TRAINING, 3), seed=3, num_views=2)
    assert len(views) == 2 and views[0].image_rgb.shape == (120, 160, 3)
    assert len(np.unique(views[0].labels)) >= 2
