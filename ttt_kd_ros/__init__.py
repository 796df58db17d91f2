"""ttt_kd_ros: test-time-adaptive 3D semantic segmentation (TTT-KD) for ROS 2.

Importing the package has no side effects: no device probing, no downloads.
"""

__version__ = "0.1.0"
