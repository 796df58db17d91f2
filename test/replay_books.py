"""The live replay's books checked against counts made outside the replay: the bag's clouds read with rosbags,
the labelled clouds that came back, and the node's own counters."""

from __future__ import annotations

from pathlib import Path

NAMED_DROPS = {f"dropped.{r}" for r in ("stale", "worker_error", "shutdown", "disabled")} | {
    f"skipped.{r}" for r in ("bad_cloud", "stamp_too_old", "stamp_in_future", "no_subscriber")}
"""The node's outcomes other than an answer, by name (ros/diagnostics.py)."""


def bag_cloud_stamps(bag: Path) -> list[int]:
    """Header stamps of every PointCloud2 in the bag, read with rosbags itself (not the replay's reader)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        clouds = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/PointCloud2"]
        stamps = []
        for connection, _, raw in reader.messages(connections=clouds):
            stamp = reader.deserialize(raw, connection.msgtype).header.stamp
            stamps.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
    return stamps


def assert_nothing_lost(run: dict, bag_stamps: list[int]) -> dict[str, int]:
    """Every cloud of the bag went out once, reached the node, and came back labelled or was dropped there for a
    named reason, with nothing left in flight; returns the named drops ({"dropped.stale": 3}).

    ``run`` is one entry of report.json's runs: its frames (one per cloud sent, ``done_s`` set when the labels
    came back, matched by stamp) and the node's last /diagnostics values.
    """
    diag = run["node_diagnostics"]
    assert [f["stamp_ns"] for f in run["frames"]] == bag_stamps  # each cloud of the bag sent once, in order
    assert int(diag["received"]) == len(bag_stamps), diag  # none lost on the way to the node
    answered = sum(f["done_s"] is not None for f in run["frames"])
    assert int(diag["processed"]) == answered, diag  # none lost on the way back
    drops = {key: int(n) for key, n in diag.items() if key.startswith(("dropped.", "skipped.")) and int(n)}
    assert set(drops) <= NAMED_DROPS, drops
    assert answered + sum(drops.values()) == len(bag_stamps), (answered, drops)
    assert diag["in_flight"] == "0", diag
    return drops
