"""sockety-bench: a loopback RPC benchmark harness.

Suites (one protocol stack each) plug in as modules of ``sockety.benchmark._suites`` that
export ``SUITES``; see :class:`Suite` and :class:`Connection` and the package README.
"""

from ._cases import CASES, Case
from ._cli import main
from ._runner import Options, run_benchmark
from ._suite import CaseSamples, Connection, Coordinator, Suite, run_case_default

__all__ = [
    "CASES",
    "Case",
    "CaseSamples",
    "Connection",
    "Coordinator",
    "Options",
    "Suite",
    "main",
    "run_benchmark",
    "run_case_default",
]

__version__ = "0.1.0"
