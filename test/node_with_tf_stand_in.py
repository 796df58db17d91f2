"""Test support: ``ttt_kd_segment`` (ros/segment_command.py) with the TFMessage stand-in registered first.

Run as a process by test_ros_node: the node then follows the sensor
process's latched /tf_static through its own tf buffer, although tf2_msgs is
not installed here. Arguments are the runner's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tf_stand_in lives beside this file

import tf_stand_in

from ttt_kd_ros.ros.segment_command import main

if __name__ == "__main__":
    tf_stand_in.install()
    sys.exit(main())
