"""Golden bytes captured from the Node.js reference (tests/vectors/README.md says how to use them).

Decoder: every case, fed whole, split in two at every byte offset, and one byte at a time.
Encoder: every single-exchange case reproduced byte for byte from the recorded ids, except the two
deliberate differences the README names.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest

from sockety.core import Connection

from ._replay import conversation, replay
from .conftest import load_vectors

CASES = load_vectors()
BY_NAME = {case["name"]: case for case in CASES}
MULTI_EXCHANGE = {
    "sequential-pass-3.c2s",
    "concurrent-20-streams.c2s",
    "concurrent-20-streams.s2c",
    "channel-limit-4.c2s",
    "channel-limit-4.s2c",
    "combined-data-files-stream.c2s",
}


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] for case in cases]


def decode(chunks: list[bytes]) -> dict[str, Any]:
    connection = Connection()
    events: list[Any] = []
    for chunk in chunks:
        events += connection.receive_data(chunk)
    assert connection.receive_eof()[0].clean
    return conversation(events)


def check_against_reference(case: dict[str, Any], got: dict[str, Any]) -> None:
    expected = case["expected"]
    header = expected["connection_header"]
    # Decision 5: E1 00 (the reference's bug for 256) reads as 256.
    assert got["channels"] == (header["channels"] or 256)
    reference = expected["reference"]
    for key in ("heartbeats", "go_aways", "fast_replies"):
        assert got[key] == reference.get(key, [] if key == "fast_replies" else 0), key
    for key in ("messages", "responses"):
        want_list = reference.get(key, [])
        assert len(got[key]) == len(want_list)
        for mine, want in zip(got[key], want_list, strict=True):
            for field in (
                "kind",
                "id",
                "parent_id",
                "action",
                "expects_response",
                "has_stream",
                "data_size",
                "files_count",
                "total_files_size",
            ):
                if field in want:
                    assert mine[field] == want[field], field
            if "data_hex" in want:
                assert mine["data"].hex() == want["data_hex"]
            else:
                assert len(mine["data"]) == want["data_len"]
                assert hashlib.sha256(mine["data"]).hexdigest() == want["data_sha256"]
            if "data_msgpack" in want:
                assert msgpack.unpackb(mine["data"]) == want["data_msgpack"]
            assert [(f["name"], f["size"], f["data"].hex()) for f in mine["files"]] == [
                (f["name"], f["size"], f["data_hex"]) for f in want["files"]
            ]
            assert all(f.get("ended") for f in mine["files"])
            if "stream" in want:
                assert mine["stream"]["data"].hex() == want["stream"]["data_hex"]
                assert mine["stream"]["ended"] == want["stream"]["ended"]
    # The channel each exchange arrived on, as the packet-level decoding recorded it.
    starts = [p for p in expected["packets"] if p["type"] in ("message", "response")]
    assert [got["channel_of"][p["id"]] for p in starts] == [p["channel"] for p in starts]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_decode_whole(case: dict[str, Any]) -> None:
    check_against_reference(case, decode([bytes.fromhex(case["hex"])]))


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_decode_split_at_every_offset(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    whole = decode([raw])
    for offset in range(1, len(raw)):
        assert decode([raw[:offset], raw[offset:]]) == whole, offset


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_decode_byte_by_byte(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    got = decode([raw[i : i + 1] for i in range(len(raw))])
    # Streams and files arrive in more, smaller chunks; the conversation is the same.
    check_against_reference(case, got)


def peer_header(case: dict[str, Any]) -> bytes:
    """The header the other side sent in the recorded conversation."""
    other = case["name"].rsplit(".", 1)[0] + (".s2c" if case["name"].endswith(".c2s") else ".c2s")
    if other in BY_NAME:
        return bytes.fromhex(BY_NAME[other]["expected"]["connection_header"]["hex"])
    return b"\xe3"


def encode(case: dict[str, Any], **options: int) -> bytes:
    raw = bytes.fromhex(case["hex"])
    events = Connection().receive_data(raw)
    sender = Connection(channels=events[0].peer_channels, **options)
    sender.receive_data(peer_header(case))
    replay(events[1:], sender)
    return sender.bytes_to_send()


ENCODER_CASES = [c for c in CASES if c["name"] not in MULTI_EXCHANGE]


@pytest.mark.parametrize("case", ENCODER_CASES, ids=ids(ENCODER_CASES))
def test_encode_exact_bytes(case: dict[str, Any]) -> None:
    expected = bytes.fromhex(case["hex"])
    if case["name"] == "header-channels-256.c2s":
        # Decision 5: the reference wrote E1 00 (a bug); 256 is E2 00 01.
        expected = b"\xe2\x00\x01"
    assert encode(case).hex() == expected.hex()


def test_encode_large_data_differs_only_by_packet_split() -> None:
    """With packets smaller than the vector's payload (our default, 128 KiB, is larger), the
    bytes differ only by the split; the decoded content is the same."""
    case = BY_NAME["pass-raw-70000.c2s"]
    mine = encode(case, max_packet_size=64 * 1024)
    reference = bytes.fromhex(case["hex"])
    header_end = 1 + 2 + 27  # connection header, Message packet
    assert mine[:header_end] == reference[:header_end]
    # Data packets of 65,536 (E8 + uint24) and 4,464 (E4 + uint16) bytes instead of one of 70,000
    assert mine[header_end : header_end + 4] == b"\xe8\x00\x00\x01"
    second = header_end + 4 + 65536
    assert mine[second : second + 3] == b"\xe4" + (70000 - 65536).to_bytes(2, "little")
    assert len(mine) == len(reference) + 3
    check_against_reference(case, decode([mine]))


MULTI_CASES = [BY_NAME[name] for name in sorted(MULTI_EXCHANGE)]


@pytest.mark.parametrize("case", MULTI_CASES, ids=ids(MULTI_CASES))
def test_encode_multi_exchange_same_conversation(case: dict[str, Any]) -> None:
    """Several exchanges in flight: the same conversation per channel. We adopted the
    reference's channel policy (current channel if free, else the first free one scanning up),
    so replaying the calls in the recorded order gives the very same bytes."""
    mine = encode(case)
    check_against_reference(case, decode([mine]))
    assert mine.hex() == case["hex"]
