"""Speed of the sans-IO codec on one core (not a test; see the package README).

    python packages/core/benchmarks/bench_codec.py [--seconds 2] [--profile CASE]

Cases: small message encode/decode (action ``ping``, ~50 B of msgpack data), and a 1 MiB payload
encode/decode. Prints the best of several rounds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

import msgpack

from sockety.core import COMPILED, Connection, new_id

SMALL = msgpack.packb({"user": "alice", "text": "hello world", "n": 12345, "ok": True, "x": 1.5})
BATCH = 1000
MIB = 1024 * 1024


def opened() -> Connection:
    connection = Connection()
    connection.receive_data(b"\xe3")
    connection.data_to_send()
    return connection


def encode_small() -> Callable[[], int]:
    connection = opened()
    ids = [new_id() for _ in range(BATCH)]

    def run() -> int:
        send = connection.send_message
        for message_id in ids:
            send(message_id, "ping", SMALL, expects_response=True)
        connection.data_to_send()
        return BATCH

    return run


def decode_small() -> Callable[[], int]:
    sender = opened()
    for _ in range(BATCH):
        sender.send_message(new_id(), "ping", SMALL, expects_response=True)
    wire = sender.bytes_to_send()
    receiver = opened()

    def run() -> int:
        events = receiver.receive_data(wire)
        assert len(events) == BATCH
        return BATCH

    return run


def encode_large() -> Callable[[], int]:
    connection = opened()
    payload = bytes(MIB)

    def run() -> int:
        connection.send_message(new_id(), "upload", payload)
        total = sum(len(chunk) for chunk in connection.data_to_send())
        assert total > MIB
        return MIB

    return run


def decode_large() -> Callable[[], int]:
    sender = opened()
    sender.send_message(new_id(), "upload", bytes(MIB))
    wire = sender.bytes_to_send()
    reads = [wire[i : i + 256 * 1024] for i in range(0, len(wire), 256 * 1024)]
    receiver = opened()

    def run() -> int:
        events = []
        for chunk in reads:
            events += receiver.receive_data(chunk)
        assert len(events) == 1 and len(events[0].data) == MIB
        return MIB

    return run


CASES = {
    "encode-small": (encode_small, "messages/s"),
    "decode-small": (decode_small, "messages/s"),
    "encode-1mib": (encode_large, "GB/s"),
    "decode-1mib": (decode_large, "GB/s"),
}


def measure(make: Callable[[], Callable[[], int]], seconds: float) -> float:
    run = make()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        done = 0
        while time.perf_counter() - start < 0.1:
            done += run()
        best = max(best, done / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case")
    parser.add_argument("--profile", choices=CASES, help="profile one case instead")
    args = parser.parse_args()
    if args.profile:
        run = CASES[args.profile][0]()
        cProfile.runctx("for _ in range(200): run()", globals(), {"run": run}, "/tmp/codec.prof")
        pstats.Stats("/tmp/codec.prof").sort_stats("tottime").print_stats(12)
        return
    print(f"sockety-core: {'compiled (mypyc)' if COMPILED else 'pure Python'}")
    for name, (make, unit) in CASES.items():
        rate = measure(make, args.seconds)
        shown = f"{rate / 1e9:,.2f}" if unit == "GB/s" else f"{rate:,.0f}"
        print(f"{name:14} {shown:>12} {unit}")


if __name__ == "__main__":
    main()
