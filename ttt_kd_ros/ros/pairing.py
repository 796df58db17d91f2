"""Pairing one cloud with its cameras' Image + CameraInfo, and answering every cloud the pairing will not match.

The node admits a cloud (stamp and subscriber checks) and hands it here;
camera messages come straight from their subscriptions. Each cloud is
offered to the approximate-time synchroniser first (message_filters or
ros/sync.py, ``compat.make_synchronizer``), so images that arrived just
before it pair with it however long the cameras were silent before; it
waits in ros/pending.py until it is matched or expires (overflow, a newer
match, its wait, or a camera that was already silent when it arrived).
Every cloud leaves through the answers interface it is given: ``on_pair``
with its camera messages, or ``on_alone`` with the reason. WHY an interface:
the answers go straight to the worker's hand-off (ros/handoff.py); nothing
here calls the node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from ttt_kd_ros.msgs.scan_messages import CameraMessages
from ttt_kd_ros.ros.compat import SyncPipeline, make_synchronizer
from ttt_kd_ros.ros.pending import CAMERA_TIMEOUT, PendingCloud, PendingClouds
from ttt_kd_ros.ros.reason_log import ReasonLog

if TYPE_CHECKING:
    from ttt_kd_ros.ros.params import NodeParams

SWEEP_PERIOD_S = 0.05
"""How often clouds waiting for their images are checked for expiry (the node's timer calls ``Pairing.sweep``)."""
SILENT_CAMERA_GRACE_S = 0.1
"""While a camera is silent, a cloud still waits this long (or sync_slop_s, if longer) for images sent after it."""


class PairingAnswers(Protocol):
    """Where every cloud leaves the pairing; ``group`` spans one callback, whose answers go on together."""

    def group(self) -> AbstractContextManager[None]: ...

    def on_pair(self, cloud: PendingCloud, cameras: tuple[CameraMessages, ...]) -> None: ...

    def on_alone(self, cloud: PendingCloud, reason: str) -> None: ...


class Pairing:
    """The synchroniser, the clouds waiting in it and the cameras' silence, between ``start`` and ``stop``.

    One per node: the "segmenting clouds alone" warning is logged once until
    a cloud pairs again, across ``~/enable`` and re-activation.
    """

    def __init__(self, logger: Any, problems: ReasonLog) -> None:
        self._logger = logger  # rclpy's node logger: info / warning
        self._problems = problems
        self._params: NodeParams | None = None  # read live: camera_timeout_s may change at run time
        self._answers: PairingAnswers | None = None
        self._sync: SyncPipeline | None = None
        self._pending = PendingClouds(1)
        self._camera_seen_s: dict[str, float] = {}
        self._active_since_s = 0.0
        self._alone_logged = False

    def start(self, params: NodeParams, answers: PairingAnswers) -> None:
        """Pair the clouds of ``params``' cameras from now on; a camera that never sends is silent from now."""
        self._params, self._answers = params, answers
        self._active_since_s = time.monotonic()
        self._camera_seen_s = {}
        self._pending = PendingClouds(params["sync_queue_size"])
        names = ["cloud"]
        for cam in params.cameras:
            names += [f"{cam.name}/image", f"{cam.name}/camera_info"]
        self._sync = make_synchronizer(names, params["sync_queue_size"], params["sync_slop_s"], self._on_matched)

    def stop(self) -> int:
        """Stop pairing; returns how many clouds were still waiting (the node counts them as dropped)."""
        self._sync = None
        return len(self._pending.drain())

    def camera_feeds(self, index: int) -> tuple[Callable[[Any], None], Callable[[Any], None]]:
        """The subscription callbacks (Image, CameraInfo) of the ``index``-th camera of the cameras parameter."""
        name = self._params.cameras[index].name
        return self._feed(name, 1 + 2 * index), self._feed(name, 2 + 2 * index)

    def _feed(self, camera: str, input_index: int) -> Callable[[Any], None]:
        def feed(msg: Any) -> None:
            self._camera_seen_s[camera] = time.monotonic()
            sync = self._sync
            if sync is not None:
                sync.add(input_index, msg)

        return feed

    def take(self, cloud: PendingCloud) -> None:
        """Pair first: images that arrived before this cloud match it now, whatever the cameras' silence says."""
        for expired, reason in self._pending.add(cloud):
            self._answer_alone(expired, reason)
        sync = self._sync
        if sync is not None:
            sync.add(0, cloud.msg)

    def _on_matched(self, cloud_msg: Any, *camera_msgs: Any) -> None:
        """The synchroniser's callback (inside whichever subscription completed the set)."""
        with self._answers.group():
            cloud, older = self._pending.matched(cloud_msg)
            for expired, reason in older:
                self._answer_alone(expired, reason)
            if cloud is None:  # answered alone already (timed out); its late images change nothing
                return
            if self._alone_logged:
                self._alone_logged = False
                self._logger.info("clouds are pairing with their images again")
            # the one form the camera messages keep until they are decoded in the worker
            cameras = tuple(CameraMessages(cam.name, image, info) for cam, image, info
                            in zip(self._params.cameras, camera_msgs[0::2], camera_msgs[1::2], strict=True))
            self._answers.on_pair(cloud, cameras)

    def sweep(self) -> None:
        """Answer clouds whose images will not come (the node's timer): a silent camera, or waiting camera_timeout_s."""
        silent = self._silent_cameras()
        grace = max(self._params["sync_slop_s"], SILENT_CAMERA_GRACE_S)
        with self._answers.group():
            for expired, reason in self._pending.sweep(time.monotonic(), self._params["camera_timeout_s"],
                                                       min(silent.values(), default=None), grace):
                if reason == CAMERA_TIMEOUT and not self._alone_logged:
                    self._alone_logged = True
                    self._logger.warning(
                        f"no message from camera(s) {sorted(silent)} for {self._params['camera_timeout_s']} s: "
                        "segmenting clouds alone (no adaptation) until they are back")
                self._answer_alone(expired, reason)

    def _silent_cameras(self) -> dict[str, float]:
        """Camera name -> when it went silent (its last message + camera_timeout_s), for each one silent now."""
        timeout = self._params["camera_timeout_s"]
        if timeout <= 0:
            return {}
        now = time.monotonic()
        went_silent = {c.name: self._camera_seen_s.get(c.name, self._active_since_s) + timeout
                       for c in self._params.cameras}
        return {name: at for name, at in went_silent.items() if at < now}

    def _answer_alone(self, cloud: PendingCloud, reason: str) -> None:
        """A cloud its images did not match: segmented without cameras, ``unadapted.<reason>`` on /diagnostics."""
        if reason != CAMERA_TIMEOUT:
            self._problems.report(reason, f"cloud at {cloud.stamp_ns} ns answered without adaptation: {reason} "
                                          "(no image set matched it within sync_slop_s)")
        self._answers.on_alone(cloud, reason)

    def overflow_by_input(self) -> dict[str, int] | None:
        """Messages each synchroniser input pushed out unmatched (/diagnostics); None where the synchroniser does
        not count them (message_filters) or is stopped."""
        sync = self._sync
        overflow = getattr(getattr(sync, "synchronizer", None), "overflow_by_input", None)
        if overflow is None:
            return None
        return {feed.name: n for feed, n in zip(sync.inputs, overflow, strict=True)}
