"""The conformance suite against both servers: one test per registered check and server.

The suite runs once per server (concurrently, as `stateshift conformance` does) in a
module-scoped fixture; each test reports its own check's verdict, so a failure names the
server and the check: `test_conformance[legacy-auth.expired_token_closes_4401]`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conformance.registry import REGISTRY
from conformance.runner import Report, run_checks
from tests.conformance.servers import CONFIG, KINDS, server_args
from tests.support import TEST_SECRET, running


def _selected_checks(request: pytest.FixtureRequest, kind: str) -> list[str]:
    """Names of this module's checks that were collected for `kind` (honours -k and deselection)."""
    names = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if (
            isinstance(item, pytest.Function)
            and item.module is request.module
            and callspec is not None
            and callspec.params.get("server_kind") == kind
        ):
            names.add(callspec.params["check_name"])
    return sorted(names)


@pytest.fixture(scope="module", params=KINDS)
def server_kind(request: pytest.FixtureRequest) -> str:
    """Which server the module's tests judge."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def report(
    request: pytest.FixtureRequest, server_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Report, Path]:
    """Start the server, run the selected checks against it, stop it: (report, server log)."""
    tmp = tmp_path_factory.mktemp(server_kind)
    log = tmp / "server.log"
    checks = [REGISTRY[name] for name in _selected_checks(request, server_kind)]
    with running(server_args(server_kind, tmp), log) as server:
        result = asyncio.run(run_checks(checks, server.url, TEST_SECRET, CONFIG))
    return result, log


@pytest.mark.parametrize(
    "check_name",
    [
        pytest.param(name, marks=[pytest.mark.slow] if REGISTRY[name].slow else [], id=name)
        for name in sorted(REGISTRY)
    ],
)
def test_conformance(report: tuple[Report, Path], check_name: str) -> None:
    """The server passes the check (docstring of the check: what PROTOCOL.md rule it verifies)."""
    result, log = report
    outcome = result.result(check_name)
    if not outcome.passed:
        pytest.fail(
            f"{check_name}: {outcome.message}\n  verifies: {outcome.doc}\n  server log: {log}",
            pytrace=False,
        )
