"""`stateshift compare status|show|explain` against a real proxy with its comparator, as a
user runs them (subprocesses; the proxy runs in this test's event loop)."""

from __future__ import annotations

import asyncio
import sys

import orjson

from stateshift.tokens import mint_token
from tests.compare.test_live import Harness, harness, play  # noqa: F401  (the fixture)
from tests.support import ROOT, TEST_SECRET, cli_env, timeout, wait_until


async def cli(*args: str) -> tuple[int, str]:
    env = cli_env(STATESHIFT_ADMIN_TOKEN=mint_token(TEST_SECRET, "ops", "admin"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stateshift",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout(60))
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_status_show_and_explain_report_a_real_divergence(harness: Harness):  # noqa: F811
    proxy, live = await harness("score-delta-off-by-one")
    await play(proxy.url, "odd", players=2, rounds=3)
    await wait_until(
        lambda: live.comparator.store.count() == 1, within=timeout(20), what="a finding"
    )
    control = f"ws://127.0.0.1:{live.control.port}"

    code, out = await cli("compare", "status", "--proxy", control, "--json")
    assert code == 1, out  # a diverged game
    assert orjson.loads(out)["diverged"] == ["odd"]

    code, out = await cli("compare", "show", "--proxy", control, "--json")
    assert code == 0, out
    (finding,) = orjson.loads(out)
    assert "root['state']['scores'][*]" in finding["paths"]

    code, out = await cli("compare", "explain", str(finding["id"]), "--proxy", control, "--json")
    assert code == 0, out
    detail = orjson.loads(out)
    assert detail["primary"]["state"]["scores"] != detail["shadow"]["state"]["scores"]

    code, out = await cli("compare", "explain", str(finding["id"]), "--proxy", control)
    assert code == 0, out
    assert "scores" in out


async def test_resync_from_the_cli_makes_the_game_comparable_again(harness: Harness):  # noqa: F811
    proxy, live = await harness("score-delta-off-by-one")
    await play(proxy.url, "fixme", players=1, rounds=2)
    await wait_until(
        lambda: bool(live.comparator.diverged), within=timeout(20), what="a divergence"
    )
    code, out = await cli(
        "compare", "resync", "fixme", "--proxy", f"ws://127.0.0.1:{live.control.port}", "--json"
    )
    assert code == 0, out
    assert orjson.loads(out)["game_id"] == "fixme"
    assert live.comparator.status()["diverged"] == []
    assert live.comparator.resyncs == 1
