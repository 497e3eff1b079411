"""Files: from memory, from disk (read in chunks while sent) and from an async iterator; the
receiver saves them. Self-contained: starts its own server on a free port.

    python examples/files.py
"""

import hashlib
import tempfile
from pathlib import Path

from sockety.client import Draft, FileTransfer, Message, Router, connect, run
from sockety.server import serve

router = Router()
inbox = Path(tempfile.mkdtemp(prefix="sockety-files-"))


@router.action("upload")
async def on_upload(message: Message) -> int:
    for file in message.files:
        saved = await file.save(inbox / file.name)
        print(f"saved {file.name}: {file.size} bytes, sha256 {digest(saved.read_bytes())}")
    return 0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def generated():
    for index in range(10):
        yield bytes([index]) * 1000


async def main() -> None:
    source = inbox / "source.txt"
    source.write_text("a file on disk\n" * 1000)
    upload = Draft("upload", files=True)
    async with serve(router) as server, connect("127.0.0.1", server.port) as client:
        code = await client.request(
            upload(
                files=[
                    FileTransfer.from_bytes(b"there is some text", "memory.txt"),
                    FileTransfer.from_path(source, "disk.txt"),
                    FileTransfer.from_iterator(generated(), "generated.bin", size=10_000),
                ]
            )
        )
        print("reply:", code)


if __name__ == "__main__":
    run(main())
