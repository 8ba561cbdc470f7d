"""`stateshift demo` end to end, as a new user runs it: exit 0 and a summary that shows the
divergence found and resynced, the flip and the rollback, and no disconnection."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from demo.stack import StaticSite
from tests.proxy.conftest import Client, start_legacy, token
from tests.support import ROOT, cli_env, timeout


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """`stateshift demo ARGS` as a subprocess, output captured (wide, so lines stay whole)."""
    return subprocess.run(
        [sys.executable, "-m", "stateshift", "demo", *args],
        capture_output=True,
        text=True,
        env=cli_env(COLUMNS="200"),
        cwd=ROOT,
        timeout=timeout(120),
    )


def test_the_demo_runs_end_to_end_and_says_what_it_showed():
    done = run_demo("--duration", "12", "--players", "6", "--games", "3")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    summary = out[out.index("demo summary") :]
    for step in (
        "divergence found",
        "divergence explained",
        "divergence resynced",
        "check",
        "flip under load",
        "rollback under load",
        "clients stayed connected",
        "no update lost",
        "both servers equal at the end",
    ):
        assert re.search(rf"│ {step} +│ ok ", summary), step
    assert "FAILED" not in summary
    assert re.search(r"disconnections +0\b", summary)
    assert "root['state']['scores'][*]" in out  # the explanation names the path
    assert "demo OK" in out


def test_the_demo_without_a_fault_finds_nothing():
    done = run_demo("--duration", "8", "--players", "2", "--games", "2", "--no-fault")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "divergence found" not in done.stdout
    assert re.search(r"findings / resyncs +0 /", done.stdout)


async def test_the_legacy_fault_switches_on_and_off_at_runtime(tmp_path: Path):
    """The one method the demo adds to the old server: deltas are off by one only while on."""
    old = await start_legacy(tmp_path)
    try:
        client = await Client.open(f"{old.url}/v1/games/g")
        await client.request(type="CONNECT", id="c", token=token("p0"))
        scores = []
        for n, on in enumerate((True, False)):
            old.set_score_delta_fault(on)
            ack = await client.request(
                type="STATE_UPDATE", id=f"u{n}", updates={"score_deltas": {"p0": 1}}
            )
            assert ack["type"] == "ACK"
            state = await client.recv()
            scores.append(state["state"]["scores"]["p0"])
        assert scores == [2, 3]
        await client.ws.close()
    finally:
        await old.stop()


def test_the_static_site_serves_a_directory(tmp_path: Path):
    (tmp_path / "index.html").write_text("<p>hello</p>")
    site = StaticSite(tmp_path)
    try:
        with urllib.request.urlopen(site.url, timeout=timeout()) as answer:
            assert answer.read() == b"<p>hello</p>"
    finally:
        site.close()
