"""``sockety-server --cluster`` when sockety-cluster is missing or NATS is absent."""

from __future__ import annotations

import subprocess
import sys

_WITHOUT_CLUSTER = (
    "import sys; sys.modules['sockety.cluster'] = None; "
    "from sockety.server._cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_cluster_without_the_package_is_a_usage_error() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_CLUSTER,
            "sockety.cluster._demo:router",
            "--cluster",
            "nats://127.0.0.1:4222",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--cluster needs the sockety-cluster package" in done.stderr


def test_cluster_with_nats_absent_exits_with_a_clear_error() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sockety.server",
            "sockety.cluster._demo:router",
            "--port",
            "0",
            "--cluster",
            "nats://127.0.0.1:1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot connect to NATS at nats://127.0.0.1:1" in done.stderr
