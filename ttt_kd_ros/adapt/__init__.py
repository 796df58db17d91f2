"""Test-time adaptation (being split into modules: the next commit; this one only moves the file so history follows)."""

from ttt_kd_ros.adapt.gradient import *  # noqa: F403
