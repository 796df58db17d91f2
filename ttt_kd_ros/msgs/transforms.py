"""Camera extrinsics: where each camera sits relative to the cloud, as a 4x4 ``cam_from_cloud``.

Three sources, one convention (X_cam = T @ X_cloud, as ``CameraView`` wants):

- the node's parameters: x y z qx qy qz qw, the camera's pose in the cloud
  frame as static_transform_publisher takes it (``pose_to_matrix`` gives
  cloud_from_cam; ros/extrinsics.py inverts it);
- offline readers' fixed values (``cam_from_cloud_from_parameter``): a
  row-major 4x4 (16 numbers) or translation + quaternion (7 numbers) giving
  cam_from_cloud directly; an empty value means "identity", valid only when
  the cloud is already in the camera frame (a depth camera's cloud in its
  optical frame);
- tf2 (``tf2_ros.Buffer.lookup_transform(camera_frame, cloud_frame, t)``),
  when tf2_ros is importable (a ROS install; the adapter is in ros/compat.py,
  the only part that needs rclpy);
- TransformStamped lists from ``/tf_static`` in bags: ``TransformGraph``
  chains them between any two connected frames.

A TransformStamped with header.frame_id = parent and child_frame_id = child
is the pose of the child in the parent: X_parent = T @ X_child. So tf's
``lookup_transform(target, source)`` and ``TransformGraph.lookup(target,
source)`` both return target_from_source.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ttt_kd_ros.msgs.stamps import stamp_to_ns


def quaternion_to_matrix(xyzw: Sequence[float]) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> (3, 3) rotation; normalised first (bags store rounded values)."""
    q = np.asarray(xyzw, dtype=np.float64).reshape(-1)
    if q.size != 4:
        raise ValueError(f"quaternion: expected 4 values (x, y, z, w), got {q.size}")
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"quaternion: expected a non-zero finite (x, y, z, w), got {q.tolist()}")
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion (x, y, z, w) with w >= 0 (Shepperd's method: stable for every angle)."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    trace = float(np.trace(R))
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    quat = np.asarray(q) / np.linalg.norm(q)
    return -quat if quat[3] < 0 else quat


def make_transform(translation_xyz: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """(4, 4) homogeneous transform from a translation and a rotation quaternion."""
    t = np.asarray(translation_xyz, dtype=np.float64).reshape(-1)
    if t.size != 3:
        raise ValueError(f"translation: expected 3 values, got {t.size}")
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(quaternion_xyzw)
    T[:3, 3] = t
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform, using R^T rather than a general inverse."""
    T = np.asarray(T, dtype=np.float64)
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def cam_from_cloud_from_parameter(value: Sequence[float] | None, camera: str = "camera") -> np.ndarray:
    """A node / CLI parameter -> (4, 4) cam_from_cloud.

    16 numbers: row-major 4x4 (last row must be 0 0 0 1); 7 numbers: x y z qx
    qy qz qw; empty or None: identity (a depth cloud already in the camera's
    optical frame). The rotation block must be orthonormal within 1e-3, which
    catches transposed or scaled matrices pasted from other conventions.
    """
    values = [] if value is None else [float(v) for v in value]
    if not values:
        return np.eye(4)
    if len(values) == 7:
        return make_transform(values[:3], values[3:])
    if len(values) != 16:
        raise ValueError(
            f"camera {camera}: cam_from_cloud must have 16 (4x4 row-major) or 7 (x y z qx qy qz qw) values, "
            f"got {len(values)}"
        )
    T = np.asarray(values).reshape(4, 4)
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError(f"camera {camera}: cam_from_cloud last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise ValueError(f"camera {camera}: cam_from_cloud rotation is not a proper rotation: {R.tolist()}")
    return T


def pose_to_matrix(values: Sequence[float], name: str = "extrinsics") -> np.ndarray:
    """x y z qx qy qz qw (a child frame's pose in its parent) -> (4, 4) parent_from_child.

    The order and direction static_transform_publisher takes (``--x --y --z
    --qx --qy --qz --qw --frame-id parent --child-frame-id child``) and tf
    publishes, so the numbers of a running tf tree can be pasted as they are.
    ValueError names ``name`` when there are not 7 finite numbers.
    """
    numbers = [float(v) for v in values]
    if len(numbers) != 7 or not np.all(np.isfinite(numbers)):
        raise ValueError(f"{name}: expected 7 finite numbers x y z qx qy qz qw, got {numbers}")
    try:
        return make_transform(numbers[:3], numbers[3:])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def matrix_to_pose(parent_from_child: np.ndarray) -> list[float]:
    """(4, 4) parent_from_child -> [x, y, z, qx, qy, qz, qw] (the child's pose in the parent; qw >= 0)."""
    T = np.asarray(parent_from_child, dtype=np.float64).reshape(4, 4)
    return [float(v) for v in T[:3, 3]] + [float(v) for v in matrix_to_quaternion(T[:3, :3])]


def transform_to_matrix(transform: Any) -> np.ndarray:
    """geometry_msgs Transform (translation + rotation; rclpy or rosbags) -> (4, 4)."""
    t, q = transform.translation, transform.rotation
    return make_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def transform_stamped_to_matrix(msg: Any) -> np.ndarray:
    """TransformStamped (rclpy or rosbags) -> (4, 4) parent_from_child (parent = header.frame_id)."""
    return transform_to_matrix(msg.transform)


def matrix_to_transform_stamped(T: np.ndarray, parent_frame: str, child_frame: str, stamp_ns: int = 0) -> Any:
    """(4, 4) parent_from_child -> geometry_msgs TransformStamped (for tests and bag writing)."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent_frame, child_frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    T = np.asarray(T, dtype=np.float64)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (float(v) for v in T[:3, 3])
    qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(T[:3, :3]))
    msg.transform.rotation.x, msg.transform.rotation.y, msg.transform.rotation.z, msg.transform.rotation.w = (
        qx, qy, qz, qw)
    return msg


class TransformGraph:
    """Static transforms (e.g. a bag's /tf_static) as a frame graph, looked up along any chain.

    Edges are stored in both directions, so ``lookup`` works whichever way a
    driver published a link. Each edge keeps its history by stamp: a bag that
    concatenates recordings (KITTI drives with different calibrations) re-sends
    /tf_static with new values, and a cloud must use the link valid at its own
    stamp. ``lookup(..., stamp_ns=None)`` uses the newest value of every edge.
    """

    def __init__(self, transforms: Iterable[Any] = (), dynamic_window_s: float = 10.0) -> None:
        # frame -> neighbour -> [(stamp_ns, frame_from_neighbour)] sorted by stamp
        self._edges: dict[str, dict[str, list[tuple[int, np.ndarray]]]] = {}
        self._dynamic: set[tuple[str, str]] = set()  # (frame, neighbour) links from /tf rather than /tf_static
        self.dynamic_window_ns = int(dynamic_window_s * 1e9)
        self.add_all(transforms)

    @property
    def frames(self) -> set[str]:
        return set(self._edges)

    def add(self, msg: Any, static: bool = True) -> None:
        """One TransformStamped (its header stamp orders repeated links)."""
        parent, child = str(msg.header.frame_id).lstrip("/"), str(msg.child_frame_id).lstrip("/")
        self.add_matrix(parent, child, transform_stamped_to_matrix(msg), stamp_to_ns(msg.header.stamp), static)

    def add_matrix(self, parent: str, child: str, parent_from_child: np.ndarray, stamp_ns: int = 0,
                   static: bool = True) -> None:
        """A link; ``static`` False marks a /tf link (bounded history, no value before its first sample)."""
        if parent == child:
            raise ValueError(f"transform: parent and child frame are both {parent!r}")
        T = np.asarray(parent_from_child, dtype=np.float64).reshape(4, 4)
        stamp_ns = int(stamp_ns)
        for a, b, value in ((parent, child, T), (child, parent, invert_transform(T))):
            history = self._edges.setdefault(a, {}).setdefault(b, [])
            if static:
                self._dynamic.discard((a, b))
                history[:] = [item for item in history if item[0] != stamp_ns]
                history.append((stamp_ns, value))
                history.sort(key=lambda item: item[0])
                continue
            if (a, b) not in self._dynamic:  # a link that moves now: its static history no longer applies
                self._dynamic.add((a, b))
                history.clear()
            at = bisect.bisect_left(history, stamp_ns, key=lambda item: item[0])
            if at < len(history) and history[at][0] == stamp_ns:
                history[at] = (stamp_ns, value)
            else:
                history.insert(at, (stamp_ns, value))
            oldest_kept = history[-1][0] - self.dynamic_window_ns
            drop = bisect.bisect_left(history, oldest_kept, key=lambda item: item[0])
            del history[:drop]

    def add_all(self, transforms: Iterable[Any], static: bool = True) -> None:
        """TransformStamped messages, or TFMessage-like objects with ``.transforms``."""
        for item in transforms:
            for msg in getattr(item, "transforms", [item]):
                self.add(msg, static)

    def can_transform(self, target: str, source: str) -> bool:
        return self._path(target.lstrip("/"), source.lstrip("/")) is not None

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> np.ndarray:
        """(4, 4) target_from_source (X_target = T @ X_source), chained along the shortest path.

        With ``stamp_ns``, each link uses its newest value stamped at or before
        it. A static link uses its oldest value when all are later (static
        links hold backwards); a dynamic (/tf) link has no value before its
        first kept sample, nor more than ``dynamic_window_s`` after its last
        (a publisher that stopped), and the lookup raises LookupError.
        """
        T = np.eye(4)
        for frame, nxt in self._links(target, source):
            history = self._edges[frame][nxt]
            if (frame, nxt) in self._dynamic:
                T = T @ self._dynamic_value_at(history, stamp_ns, frame, nxt)
            else:
                T = T @ _value_at(history, stamp_ns)  # frame_from_nxt
        return T

    def lookup_latest(self, target: str, source: str) -> tuple[np.ndarray, int | None]:
        """(target_from_source from every link's newest value, the stamp it holds at) - LookupError if no chain.

        The stamp is the oldest of the newest /tf samples on the chain (tf's
        "latest common time"); None when every link is static (valid at any stamp).
        """
        T = np.eye(4)
        stamp: int | None = None
        for frame, nxt in self._links(target, source):
            newest_stamp, value = self._edges[frame][nxt][-1]
            if (frame, nxt) in self._dynamic:
                stamp = newest_stamp if stamp is None else min(stamp, newest_stamp)
            T = T @ value
        return T, stamp

    def _links(self, target: str, source: str) -> list[tuple[str, str]]:
        """(frame, next frame) links of the shortest chain from target to source; LookupError naming the frames."""
        target, source = target.lstrip("/"), source.lstrip("/")
        path = self._path(target, source)
        if path is None:
            raise LookupError(
                f"no transform chain from {source!r} to {target!r}; known frames: {sorted(self._edges)}"
            )
        return list(itertools.pairwise(path))

    def _dynamic_value_at(self, history: list[tuple[int, np.ndarray]], stamp_ns: int | None, frame: str,
                          nxt: str) -> np.ndarray:
        if stamp_ns is None:
            return history[-1][1]
        at = bisect.bisect_right(history, stamp_ns, key=lambda item: item[0])
        if at == 0:
            raise LookupError(f"/tf link {frame!r} - {nxt!r}: no sample at or before {stamp_ns} ns "
                              f"(oldest kept: {history[0][0]} ns)")
        stamp, value = history[at - 1]
        if stamp_ns - stamp > self.dynamic_window_ns:
            raise LookupError(f"/tf link {frame!r} - {nxt!r}: newest sample at or before {stamp_ns} ns is "
                              f"{(stamp_ns - stamp) / 1e9:.3f} s older (window {self.dynamic_window_ns / 1e9} s)")
        return value

    def _path(self, target: str, source: str) -> list[str] | None:
        """Frames from target to source (breadth first), or None when they are not connected."""
        if target == source:
            return [target]
        if target not in self._edges or source not in self._edges:
            return None
        previous: dict[str, str] = {target: target}
        queue = deque([target])
        while queue:
            frame = queue.popleft()
            for nxt in self._edges[frame]:
                if nxt in previous:
                    continue
                previous[nxt] = frame
                if nxt == source:
                    path = [source]
                    while path[-1] != target:
                        path.append(previous[path[-1]])
                    return path[::-1]
                queue.append(nxt)
        return None


def _value_at(history: list[tuple[int, np.ndarray]], stamp_ns: int | None) -> np.ndarray:
    if stamp_ns is None:
        return history[-1][1]
    before = [value for stamp, value in history if stamp <= stamp_ns]
    return before[-1] if before else history[0][1]


class TransformBuffer:
    """A TransformGraph fed from /tf and /tf_static callbacks and read by the worker: the node's own tf buffer.

    Used where tf2_ros is not importable (``ros.compat.make_tf_lookup``); it has
    the same small interface as the tf2_ros wrapper there: ``lookup(target,
    source, stamp_ns) -> (4, 4) target_from_source | None``. Policy: each link
    takes its newest value stamped at or before ``stamp_ns`` (no
    interpolation); static links hold for any stamp; /tf links hold for
    ``cache_time_s`` after their last sample and have no value before their
    first kept one. One lock guards the graph; nothing outside this class runs
    while it is held.
    """

    backend = "builtin"

    def __init__(self, cache_time_s: float = 10.0) -> None:
        self._graph = TransformGraph(dynamic_window_s=cache_time_s)
        self._lock = threading.Lock()
        self.rejected = 0  # transforms that could not be used (parent == child, zero quaternion)

    def add_message(self, msg: Any, static: bool) -> int:
        """A TFMessage (or one TransformStamped); returns how many transforms were stored, bad ones skipped."""
        parsed = []
        for item in getattr(msg, "transforms", [msg]):
            try:
                parent, child = str(item.header.frame_id).lstrip("/"), str(item.child_frame_id).lstrip("/")
                parsed.append((parent, child, transform_stamped_to_matrix(item), stamp_to_ns(item.header.stamp)))
            except (ValueError, AttributeError):
                parsed.append(None)
        stored = 0
        with self._lock:
            for entry in parsed:
                if entry is None:
                    self.rejected += 1
                    continue
                try:
                    self._graph.add_matrix(*entry, static=static)
                    stored += 1
                except ValueError:
                    self.rejected += 1
        return stored

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> np.ndarray | None:
        """(4, 4) target_from_source at ``stamp_ns`` (None: newest), or None when no chain or no valid sample."""
        with self._lock:
            try:
                return self._graph.lookup(target, source, stamp_ns)
            except LookupError:
                return None

    def lookup_latest(self, target: str, source: str) -> tuple[np.ndarray, int | None] | None:
        """(newest target_from_source, the stamp it holds at; None: all static), or None when there is no chain."""
        with self._lock:
            try:
                return self._graph.lookup_latest(target, source)
            except LookupError:
                return None

    def why_not(self, target: str, source: str, stamp_ns: int | None = None) -> str:
        """Why ``lookup`` returns None (for a log line); empty when it does not."""
        with self._lock:
            try:
                self._graph.lookup(target, source, stamp_ns)
            except LookupError as exc:
                return str(exc)
        return ""

    @property
    def frames(self) -> set[str]:
        with self._lock:
            return self._graph.frames
