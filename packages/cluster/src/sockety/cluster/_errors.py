"""The cluster's errors: each says whose fault it is."""

from __future__ import annotations

from sockety.core import SocketyError

__all__ = [
    "ClusterError",
    "ClusterUnavailableError",
    "KeyTakenError",
    "NotConnectedError",
    "PayloadTooLargeError",
]


class ClusterError(SocketyError):
    """Base of the cluster's errors."""


class ClusterUnavailableError(ClusterError):
    """NATS cannot be reached (not started, or the link is down and its buffer is full)."""


class PayloadTooLargeError(ClusterError, ValueError):
    """The caller's message is larger than the cluster's ``max_payload``: nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a cluster payload of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class KeyTakenError(ClusterError):
    """The key is bound to another live connection (on this server or another)."""

    def __init__(self, key: str, server: str) -> None:
        super().__init__(f"key {key!r} is already bound on server {server!r}")
        self.key = key
        self.server = server


class NotConnectedError(ClusterError):
    """No live connection holds the key anywhere in the cluster (or its server did not answer)."""

    def __init__(self, key: str, why: str = "no connection holds it") -> None:
        super().__init__(f"key {key!r}: {why}")
        self.key = key
