"""ament_python build of ttt_kd_ros; also a plain pip package (scripts/install.sh)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ttt_kd_ros"

# One line per console command; package.xml is checked against this list in
# test/test_package.py.
CONSOLE_SCRIPTS = [
    "ttt_kd_segment = ttt_kd_ros.ros.segment_command:main",
    "segment_node = ttt_kd_ros.ros.node:main",
    "ttt_kd_benchmark_node = ttt_kd_ros.ros.benchmark_node:main",
    "ttt_kd_benchmark_convert = ttt_kd_ros.tools.benchmark_convert:main",
    "ttt_kd_render = ttt_kd_ros.tools.render:main",
    "ttt_kd_benchmark_engine = ttt_kd_ros.tools.benchmark_engine:main",
    "ttt_kd_train = ttt_kd_ros.tools.train:main",
    "ttt_kd_pretrain_teacher = ttt_kd_ros.tools.pretrain_teacher:main",
    "ttt_kd_pretrain_dense_teacher = ttt_kd_ros.tools.pretrain_dense_teacher:main",
    "ttt_kd_make_bag = ttt_kd_ros.tools.make_bag:main",
    "ttt_kd_replay = ttt_kd_ros.tools.replay:main",
    "ttt_kd_demo = ttt_kd_ros.tools.demo:main",
    "ttt_kd_evaluate = ttt_kd_ros.tools.evaluate:main",
    "ttt_kd_cache_features = ttt_kd_ros.tools.cache_features:main",
    "ttt_kd_fit_fusion_head = ttt_kd_ros.tools.fit_fusion_head:main",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["checkpoints/*.safetensors", "checkpoints/*.json", "checkpoints/*/*.safetensors",
                            "checkpoints/*/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ttt_kd_ros maintainers",
    maintainer_email="maintainers@ttt-kd-ros.invalid",
    description="Test-time-adaptive 3D semantic segmentation (TTT-KD) for ROS 2",
    license="Apache-2.0",
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
