"""The synthetic indoor world: procedural rooms seen by RGB-D cameras or a LiDAR.

No real indoor data set can be downloaded where this package is built, so
training and evaluation of the whole package run here; domains are parameter
sets (scene style x sensor) in ``domains.DOMAINS``.
"""

from ttt_kd_ros.data.synthetic.domains import DOMAINS, Domain, get_domain
from ttt_kd_ros.data.synthetic.scene import Scene, SceneStyle, generate_scene
from ttt_kd_ros.data.synthetic.sensors import SensorConfig
from ttt_kd_ros.data.synthetic.world import (
    SyntheticDataset,
    SyntheticSample,
    generate_sample,
    generate_scan,
    scan_seed,
)

__all__ = [
    "DOMAINS",
    "Domain",
    "Scene",
    "SceneStyle",
    "SensorConfig",
    "SyntheticDataset",
    "SyntheticSample",
    "generate_sample",
    "generate_scan",
    "generate_scene",
    "get_domain",
    "scan_seed",
]
