"""The protocol conformance suite: named checks of PROTOCOL.md and docs/protocol-notes.md.

It judges the new server and the reference old server through their wire protocol only and
imports nothing from either. `run_suite(url, secret, config)` runs the registered checks;
`stateshift conformance` is its command line.
"""

from conformance.config import SuiteConfig
from conformance.registry import REGISTRY, ConformanceFailure, check
from conformance.runner import CheckResult, Report, run_suite

__all__ = [
    "REGISTRY",
    "CheckResult",
    "ConformanceFailure",
    "Report",
    "SuiteConfig",
    "check",
    "run_suite",
]
