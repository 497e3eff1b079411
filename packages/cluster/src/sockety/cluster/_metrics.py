"""Prometheus metrics of one server's link to the cluster, on the registry the server's own
metrics use (``ServerMetrics.registry``), or one of their own. Every label takes its values from
a small closed set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ClusterMetrics"]

NAMESPACE = "sockety_cluster"
#: What crosses the link: cluster-wide broadcasts, sends to a key, requests and their replies,
#: application topics, durable history appends.
KINDS = ("broadcast", "send", "request", "reply", "topic", "history")
#: Why something was dropped: the bounded outgoing queue was full, NATS dropped it for us (the
#: subscription's pending limit), it was bad (not an envelope), or the local peer was gone.
DROP_REASONS = ("queue_full", "slow_consumer", "malformed", "undeliverable")
#: Lag buckets (publish to delivery to local connections): 100 µs on one machine .. seconds.
LAG_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ClusterMetrics:
    """Counters and gauges of the cluster link (namespace ``sockety_cluster``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.published = Counter(
            "published", "Messages handed to NATS, by kind.", ["kind"], namespace=ns, registry=r
        )
        self.received = Counter(
            "received", "Messages received from NATS, by kind.", ["kind"], namespace=ns, registry=r
        )
        self.dropped = Counter(
            "dropped", "Messages dropped, by reason.", ["reason"], namespace=ns, registry=r
        )
        self.lag = Histogram(
            "lag_seconds",
            "From publish on one server to delivery on another (clocks of both machines).",
            namespace=ns,
            registry=r,
            buckets=LAG_BUCKETS,
        )
        self.queued = Gauge(
            "queued_messages",
            "Messages waiting in the outgoing queue.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connected = Gauge(
            "connected",
            "1 while the link to NATS is up.",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.disconnects = Counter(
            "disconnects", "Times the link to NATS went down.", namespace=ns, registry=r
        )
        self.reconnects = Counter(
            "reconnects", "Times the link to NATS came back.", namespace=ns, registry=r
        )
        self.bound_keys = Gauge(
            "bound_keys",
            "Keys bound to this server's connections (presence).",
            namespace=ns,
            registry=r,
            multiprocess_mode="livesum",
        )
        for kind in KINDS:
            self.published.labels(kind)
            self.received.labels(kind)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
