"""Test helpers: turn events into a plain conversation, and replay events as sender calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sockety.core import (
    Connection,
    ConnectionOpened,
    FastReplyReceived,
    FileChunkReceived,
    FileEnded,
    GoAwayReceived,
    HeartbeatReceived,
    MessageReceived,
    ResponseReceived,
    StreamChunkReceived,
    StreamEnded,
)


def conversation(events: Iterable[Any]) -> dict[str, Any]:
    """What the events say, in the shape of a vector's ``expected.reference``."""
    result: dict[str, Any] = {
        "channels": None,
        "messages": [],
        "responses": [],
        "fast_replies": [],
        "heartbeats": 0,
        "go_aways": 0,
        "channel_of": {},
    }
    by_id: dict[bytes, dict[str, Any]] = {}
    for event in events:
        kind = type(event)
        if kind is ConnectionOpened:
            result["channels"] = event.peer_channels
        elif kind is MessageReceived or kind is ResponseReceived:
            record: dict[str, Any] = {
                "kind": "message" if kind is MessageReceived else "response",
                "id": str(uuid.UUID(bytes=event.id)),
                "expects_response": event.expects_response,
                "has_stream": event.has_stream,
                "data_size": len(event.data),
                "files_count": len(event.files),
                "total_files_size": sum(f.size for f in event.files),
                "data": bytes(event.data),
                "files": [{"name": f.name, "size": f.size, "data": b""} for f in event.files],
            }
            if kind is MessageReceived:
                record["action"] = event.action
                result["messages"].append(record)
            else:
                record["parent_id"] = str(uuid.UUID(bytes=event.parent_id))
                result["responses"].append(record)
            if event.has_stream:
                record["stream"] = {"data": b"", "ended": False}
            by_id[event.id] = record
            result["channel_of"][record["id"]] = event.channel
        elif kind is StreamChunkReceived:
            by_id[event.id]["stream"]["data"] += event.chunk
        elif kind is StreamEnded:
            by_id[event.id]["stream"]["ended"] = True
        elif kind is FileChunkReceived:
            by_id[event.id]["files"][event.file_index]["data"] += event.chunk
        elif kind is FileEnded:
            by_id[event.id]["files"][event.file_index]["ended"] = True
        elif kind is FastReplyReceived:
            result["fast_replies"].append(
                {"uuid": str(uuid.UUID(bytes=event.id)), "code": event.code}
            )
        elif kind is HeartbeatReceived:
            result["heartbeats"] += 1
        elif kind is GoAwayReceived:
            result["go_aways"] += 1
    return result


def replay(events: Iterable[Any], sender: Connection) -> None:
    """Makes ``sender`` send what ``events`` describe, call for call."""
    for event in events:
        kind = type(event)
        if kind is MessageReceived:
            sender.send_message(
                event.id,
                event.action,
                event.data,
                files=[(f.name, f.size) for f in event.files],
                stream=event.has_stream,
                expects_response=event.expects_response,
            )
        elif kind is ResponseReceived:
            sender.send_response(
                event.parent_id,
                event.id,
                event.data,
                files=[(f.name, f.size) for f in event.files],
                stream=event.has_stream,
                expects_response=event.expects_response,
            )
        elif kind is StreamChunkReceived:
            sender.send_stream(event.id, event.chunk)
        elif kind is StreamEnded:
            sender.end_stream(event.id)
        elif kind is FileChunkReceived:
            sender.send_file(event.id, event.file_index, event.chunk)
        elif kind is FileEnded:
            sender.end_file(event.id, event.file_index)
        elif kind is FastReplyReceived:
            sender.send_fast_reply(event.id, event.code)
        elif kind is HeartbeatReceived:
            sender.send_heartbeat()
        elif kind is GoAwayReceived:
            sender.send_go_away()
