"""A receiver that stops reading (a real process, SIGSTOPped) slows nobody else down."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from sockety.chat import ChatMessage, SystemNotice

from ._helpers import Peer, digest, run, start_server, until

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")

# Carol: asks for every file offered, says when bytes arrive, reads through a small socket
# buffer (so that stopping her fills the server's buffers soon).
CAROL = """
import asyncio, sys
from pathlib import Path
from sockety.chat import ChatClient, FileUpdated

async def main():
    said = False
    def on_event(event):
        nonlocal said
        if isinstance(event, FileUpdated):
            if event.file.state == "offered":
                client.get(event.file.index)
            elif event.file.received and not said:
                said = True
                print("receiving", flush=True)
    client = ChatClient("127.0.0.1", int(sys.argv[1]), name="carol", on_event=on_event,
                        downloads=Path(sys.argv[2]), receive_buffer_size=16384)
    await client.run()

asyncio.run(main())
"""

STALL = 6.0  # the server's patience with a receiver that takes nothing


def test_a_stalled_receiver_slows_nobody_else(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(24 * 1024 * 1024))

    async def main() -> None:
        server = await start_server(stall=STALL, max_queued=2000, join_grace=0.2)
        carol = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CAROL,
            str(server.port),
            str(tmp_path / "carol"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert carol.stdout is not None
        try:
            async with (
                Peer(server.port, "alice") as alice,
                Peer(server.port, "bob", downloads=tmp_path / "bob") as bob,
            ):
                await until(lambda: "carol" in server.names, what="carol joins")
                upload = await alice.client.offer_file(source)
                line = await asyncio.wait_for(carol.stdout.readline(), 20)
                assert line == b"receiving\n"
                os.kill(carol.pid, signal.SIGSTOP)  # Carol's terminal freezes mid-transfer
                loop = asyncio.get_running_loop()
                started = loop.time()
                # Bob gets the whole file while Carol is stopped, and Alice chats meanwhile.
                await until(lambda: upload.index in bob.client.files, what="offer")
                bob.client.get(upload.index)
                verdicts = [alice.client.send_message(f"line {i}") for i in range(500)]
                await asyncio.wait_for(asyncio.gather(*verdicts), STALL)
                chatted = loop.time() - started
                await until(lambda: len(bob.of(ChatMessage)) == 500, timeout=STALL, what="all")
                assert [m.content for m in bob.of(ChatMessage)] == [f"line {i}" for i in range(500)]
                file = bob.client.files[upload.index]
                await until(lambda: file.state == "saved", timeout=STALL, what="bob's copy")
                fetched = loop.time() - started
                assert file.saved_to is not None and digest(file.saved_to) == digest(source)
                # Nobody waited for Carol: all of that took less than her stall timeout.
                assert fetched < STALL and chatted < STALL, (chatted, fetched)
                # Carol is dropped, and the room is told why.
                await until(lambda: "carol" not in server.names, timeout=3 * STALL, what="drop")
                await until(
                    lambda: any(
                        "carol left (disconnected: " in n.content for n in bob.of(SystemNotice)
                    ),
                    what="the reason",
                )
                # The room goes on at its pace.
                await alice.client.say("still here")
                await until(lambda: bob.of(ChatMessage)[-1].content == "still here")
                print(f"chat burst {chatted:.2f} s, 24 MiB copy {fetched:.2f} s while stalled")
        finally:
            os.kill(carol.pid, signal.SIGCONT)
            carol.kill()
            await carol.wait()
            await server.close()

    run(main(), timeout=90)
