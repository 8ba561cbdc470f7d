"""No token ever appears in logs or metrics: a full stack (old and new servers, proxy with
its comparator) runs with DEBUG logging, sees good and forged tokens on every path, and its
output and /metrics are searched for them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jwt
from websockets.asyncio.client import connect

from stateshift.tokens import mint_token
from tests.proxy.conftest import Client
from tests.support import TEST_SECRET, ServerProcess, admin_url, proxy_args, timeout


async def scrape(url: str) -> str:
    host, port = url.removeprefix("http://").removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port.split("/")[0]))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), timeout())
    writer.close()
    return raw.decode(errors="replace")


async def test_tokens_never_reach_logs_or_metrics(tmp_path: Path):
    debug = ["--log-level", "DEBUG"]
    old = ServerProcess(
        ["legacy", "--port", "0", "--data", str(tmp_path / "old.jsonl")], tmp_path / "old.log"
    )
    new = ServerProcess(
        ["serve", "--port", "0", "--db", str(tmp_path / "new.db"), *debug], tmp_path / "new.log"
    )
    old_url, new_url = old.start(), new.start()
    proxy = ServerProcess(
        proxy_args(old_url, new_url, tmp_path / "p.db", *debug),
        tmp_path / "proxy.log",
    )
    url = proxy.start()
    control_http = admin_url(proxy)
    good = mint_token(TEST_SECRET, "alice", "player", ["g1"])
    admin = mint_token(TEST_SECRET, "ops", "admin")
    forged = jwt.encode({"sub": "mallory", "role": "admin", "exp": 2**40}, "x" * 40)
    tokens = [good, admin, forged]
    try:
        for base in (url, old_url, new_url):
            client = await Client.open(f"{base}/v1/games/g1")
            await client.request(type="CONNECT", id="c", token=good)
            await client.request(type="STATE_UPDATE", id="u", updates={"status": "active"})
            await client.ws.close()
            refused = await Client.open(f"{base}/v1/admin")
            await refused.request(type="CONNECT", id="c", token=forged)
            await refused.closed()
        control = await Client.open(control_http.replace("http://", "ws://") + "/v1/control")
        await control.request(type="CONNECT", id="c", token=admin)
        await control.request(type="STATUS", id="s")
        await control.ws.close()
        async with connect(
            f"{url}/v1/games/g1", proxy=None, additional_headers={"Authorization": f"Bearer {good}"}
        ) as ws:
            await ws.send('{"type":"HEARTBEAT","id":"h"}')
            await ws.recv()
        texts = {
            "proxy metrics": await scrape(control_http),
            "new metrics": await scrape(new_url),
            "old metrics": await scrape(old_url),
        }
    finally:
        for process in (proxy, old, new):
            process.stop()
    texts.update({p.log_path.name: p.output() for p in (proxy, old, new)})
    assert "listening on" in texts["proxy.log"]  # the logs were captured
    for name, text in texts.items():
        for token in tokens:
            for part in token.split("."):  # no piece of a token either (header, claims, signature)
                if len(part) > 20:
                    assert part not in text, f"a token part appears in {name}"
