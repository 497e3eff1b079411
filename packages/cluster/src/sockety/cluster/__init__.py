"""sockety.cluster: one cluster of Sockety servers over NATS (cluster-wide broadcast, sends to a
key wherever it is connected, presence with expiry, requests handled where a connection lives,
durable history on JetStream)."""

from ._cluster import Cluster, Reply, Subjects, key_token
from ._errors import (
    ClusterError,
    ClusterUnavailableError,
    KeyTakenError,
    NotConnectedError,
    PayloadTooLargeError,
)
from ._history import History, Record
from ._metrics import ClusterMetrics
from ._nats import NatsServer, nats_server_binary

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterMetrics",
    "ClusterUnavailableError",
    "History",
    "KeyTakenError",
    "NatsServer",
    "NotConnectedError",
    "PayloadTooLargeError",
    "Record",
    "Reply",
    "Subjects",
    "key_token",
    "nats_server_binary",
]
