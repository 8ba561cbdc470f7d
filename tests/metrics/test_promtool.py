"""Every /metrics endpoint is clean under `promtool check metrics` (Prometheus' own linter),
read live from running processes with traffic."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from tests.proxy.conftest import Client, start_stack, token
from tests.support import timeout, wait_until


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), timeout())
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def promtool(text: str) -> str:
    """Problems promtool reports (empty when clean)."""
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian package prometheus; .ci/run installs it)"
    result = subprocess.run(
        [binary, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=timeout(30),
    )
    return (result.stdout + result.stderr).strip() if result.returncode else ""


async def test_server_legacy_and_proxy_metrics_pass_promtool(tmp_path: Path):
    async with start_stack(tmp_path, "score-delta-off-by-one", comparator=True) as stack:
        client = await Client.open(f"{stack.proxy.url}/v1/games/g1")
        await client.request(type="CONNECT", id="c", token=token("alice"))
        await client.request(type="STATE_UPDATE", id="u", updates={"score_deltas": {"alice": 2}})
        await client.recv()
        await client.request(type="FLY", id="x")
        # a divergence: its normalised paths become labels
        await wait_until(lambda: "g1" in stack.live.comparator.diverged, what="the divergence")
        proxy_text = await scrape(stack.control.port)
        assert "stateshift_mismatches_total{" in proxy_text
        for name, text in (
            ("proxy", proxy_text),
            ("new server", await scrape(stack.new.port)),
            ("old server", await scrape(stack.old.port)),
        ):
            assert promtool(text) == "", f"{name}: {promtool(text)}"
