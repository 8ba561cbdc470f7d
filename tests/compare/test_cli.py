"""`stateshift compare …` and `stateshift backfill`: exit codes, `--json` documents, and
what people see. `status`, `show` and `explain` run against a small fake control plane that
answers the documented shapes over a real socket; `sweep` and `backfill` against real
servers. The CLI runs in a worker thread (it has its own event loop) while the servers run
on the test's loop."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve

from compare.admin import AdminClient
from compare.cli import diff_paths, highlighted, json_lines, render_finding, render_status
from compare.diffing import compare
from compare.rules import defaults
from stateshift.cli import app
from tests.proxy.conftest import Client, start_legacy, start_new, token
from tests.support import TEST_SECRET

ADMIN = token("ops", "admin")
SECRET_ENV = "STATESHIFT_SECRET"

STATUS: dict[str, Any] = {
    "comparisons": {
        "answer": {"match": 40, "mismatch": 2, "unpaired": 1},
        "broadcast": {"match": 38, "mismatch": 2, "unpaired": 0},
        "snapshot": {"match": 12, "mismatch": 0, "unpaired": 0},
    },
    "mismatch_ratio": 0.0421,
    "top_paths": [{"kind": "broadcast", "path": "root['state']['scores'][*]", "count": 2}],
    "diverged": ["g7"],
    "not_comparable": [],
    "resyncs": 0,
    "lag_seconds": 0.012,
    "findings": 1,
}
PRIMARY = {"type": "STATE", "game_id": "g7", "version": 5, "state": {"scores": {"alice": 6}}}
SHADOW = {"type": "STATE", "game_id": "g7", "version": 5, "state": {"scores": {"alice": 5}}}
VERDICT = compare(PRIMARY, SHADOW, defaults().for_type("STATE"))
FINDING: dict[str, Any] = {
    "id": 3,
    "at": 1_764_150_000.5,
    "kind": "broadcast",
    "result": "mismatch",
    "game_id": "g7",
    "paths": VERDICT.paths,
    "versions": {"primary": 5, "shadow": 5},
    "missing": None,
    "first": True,
}
FULL_FINDING = {**FINDING, "primary": PRIMARY, "shadow": SHADOW}
FULL_FINDING.update(diff=VERDICT.diff, text=VERDICT.text)


class FakeControl:
    """A control plane answering COMPARE_STATUS, FINDINGS and FINDING as documented."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = dict(STATUS)
        self.url = ""

    async def handle(self, ws: ServerConnection) -> None:
        authenticated = False
        async for raw in ws:
            msg = orjson.loads(raw)
            self.requests.append(msg)
            kind, re_id = msg["type"], msg["id"]
            answer: dict[str, Any]
            if not authenticated:
                if msg.get("token") != ADMIN:
                    await ws.send(json.dumps(error(re_id, "UNAUTHENTICATED")))
                    await ws.close(4401)
                    return
                authenticated = True
                answer = {"type": "CONNECTED", "actor": "ops"}
            elif kind == "COMPARE_STATUS":
                answer = {"type": kind, "compare": self.status}
            elif kind == "FINDINGS":
                answer = {"type": kind, "findings": [FINDING][: msg.get("limit", 20)]}
            elif kind == "FINDING" and msg.get("finding_id") == 3:
                answer = {"type": kind, "finding": FULL_FINDING}
            elif kind == "FINDING":
                answer = error(re_id, "NOT_FOUND")
            else:
                answer = error(re_id, "UNKNOWN_TYPE")
            await ws.send(json.dumps({**answer, "re": re_id}))


def error(re_id: str, code: str) -> dict[str, Any]:
    return {"type": "ERROR", "re": re_id, "code": code, "message": code.lower()}


@pytest.fixture
async def control() -> AsyncIterator[FakeControl]:
    fake = FakeControl()
    async with serve(fake.handle, "127.0.0.1", 0) as server:
        fake.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield fake


async def invoke(*args: str, **env: str) -> tuple[int, str, str]:
    """`stateshift ARGS…` in a worker thread: (exit code, stdout, stderr)."""
    environment = {"STATESHIFT_ADMIN_TOKEN": ADMIN, SECRET_ENV: TEST_SECRET, "COLUMNS": "160"}
    environment.update(env)
    result = await asyncio.to_thread(
        CliRunner().invoke, app, list(args), env=environment, catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


# ------------------------------------------------------------------ compare rules


async def test_rules_lists_the_defaults() -> None:
    code, out, _ = await invoke("compare", "rules")
    assert code == 0
    assert "defaults" in out
    for value in ("updated_at", "server_time", "session_id", "message"):
        assert value in out


async def test_rules_json_lists_a_toml_files_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[rules."*"]\nignore_keys = ["updated_at"]\n'
        "[rules.STATE]\nexclude_regex_paths = [\"root\\\\['state'\\\\]\\\\['settings'\\\\]\"]\n"
    )
    code, out, _ = await invoke("compare", "rules", "--rules", str(path), "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["source"] == str(path)
    assert {"type": "*", "kind": "ignore_keys", "value": "updated_at"} in listing["rules"]
    assert {
        "type": "STATE",
        "kind": "exclude_regex_paths",
        "value": r"root\['state'\]\['settings'\]$",
    } in listing["rules"]
    assert len(listing["rules"]) == 2


@pytest.mark.parametrize(
    "content", ['[rules.STATE]\nignore_everything = ["x"]\n', "not toml [", "[other]\n"]
)
async def test_rules_rejects_a_bad_file_with_exit_2(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(content)
    code, out, err = await invoke("compare", "rules", "--rules", str(path))
    assert code == 2
    assert "error" in err
    assert out == ""
    if content == "[other]\n":  # the message names the table the file needs, as written
        assert "has no [rules.TYPE] tables" in err


# ------------------------------------------------------------------ control plane commands


async def test_status_json_is_the_compare_document(control: FakeControl) -> None:
    code, out, _ = await invoke("compare", "status", "--proxy", control.url, "--json")
    assert json.loads(out) == STATUS
    assert code == 1  # a game is diverged
    assert control.requests[-1]["type"] == "COMPARE_STATUS"


async def test_status_for_people_shows_counts_paths_and_games(control: FakeControl) -> None:
    control.status["diverged"] = []
    code, out, _ = await invoke("compare", "status", "--proxy", control.url)
    assert code == 0
    for text in ("mismatch ratio", "4.2100%", "root['state']['scores'][*]", "broadcast", "40"):
        assert text in out


def test_render_status_shows_diverged_games_and_truncates_long_lists() -> None:
    out = Console(file=io.StringIO(), width=200)
    render_status({**STATUS, "not_comparable": [f"n{i}" for i in range(25)]}, out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "g7" in text
    assert "… 5 more" in text


async def test_show_json_lists_the_findings_and_sends_the_limit(control: FakeControl) -> None:
    code, out, _ = await invoke("compare", "show", "--proxy", control.url, "--limit", "5", "--json")
    assert code == 0
    assert json.loads(out) == [FINDING]
    assert control.requests[-1] == {**control.requests[-1], "type": "FINDINGS", "limit": 5}


async def test_show_for_people_has_a_row_per_finding(control: FakeControl) -> None:
    code, out, _ = await invoke("compare", "show", "--proxy", control.url)
    assert code == 0
    assert "g7 (first)" in out
    assert "root['state']['scores'][*]" in out
    assert "5/5" in out


async def test_explain_json_is_the_full_finding(control: FakeControl) -> None:
    code, out, _ = await invoke("compare", "explain", "3", "--proxy", control.url, "--json")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(FULL_FINDING))
    assert control.requests[-1]["finding_id"] == 3


async def test_explain_shows_both_frames_and_the_diff(control: FakeControl) -> None:
    code, out, _ = await invoke("compare", "explain", "3", "--proxy", control.url)
    assert code == 0
    assert "primary" in out
    assert "shadow" in out
    assert '"alice": 6' in out
    assert '"alice": 5' in out
    assert "Value of root['state']['scores']['alice'] changed from 6 to 5" in out


async def test_explain_of_an_unknown_finding_exits_2(control: FakeControl) -> None:
    code, _, err = await invoke("compare", "explain", "99", "--proxy", control.url)
    assert code == 2
    assert "NOT_FOUND" in err


async def test_control_commands_need_an_admin_token(control: FakeControl) -> None:
    code, _, err = await invoke(
        "compare", "status", "--proxy", control.url, STATESHIFT_ADMIN_TOKEN=""
    )
    assert code == 2
    assert "STATESHIFT_ADMIN_TOKEN" in err
    code, _, err = await invoke(
        "compare", "status", "--proxy", control.url, STATESHIFT_ADMIN_TOKEN="wrong"
    )
    assert code == 2
    assert "UNAUTHENTICATED" in err


async def test_an_unreachable_proxy_exits_2() -> None:
    code, _, err = await invoke("compare", "status", "--proxy", "ws://127.0.0.1:1")
    assert code == 2
    assert "UNREACHABLE" in err


def test_explain_highlights_exactly_the_differing_lines() -> None:
    raw = diff_paths(VERDICT.diff)
    assert raw == {"root['state']['scores']['alice']"}
    lines = dict(json_lines(PRIMARY))
    assert lines['      "alice": 6'] == "root['state']['scores']['alice']"
    text = highlighted(PRIMARY, raw, set(VERDICT.paths), "bold red")
    marked = [text.plain[span.start : span.end].strip() for span in text.spans]
    assert marked == ['"alice": 6']


def test_a_missing_frame_renders_as_nothing() -> None:
    out = Console(file=io.StringIO(), width=160)
    render_finding({**FULL_FINDING, "shadow": None, "missing": "shadow"}, out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "(nothing)" in text
    assert "on the shadow" in text


# ------------------------------------------------------------------ sweep and backfill


async def seed(url: str, *game_ids: str) -> None:
    async with AdminClient(url, ADMIN) as admin:
        for n, game_id in enumerate(game_ids):
            await admin.import_state(
                {
                    "game_id": game_id,
                    "status": "waiting",
                    "current_player": None,
                    "scores": {"p": n},
                    "timer": {"p": 1000},
                    "settings": {},
                    "version": n + 1,
                    "updated_at": "2026-11-26T10:00:00.000Z",
                }
            )


async def test_sweep_exits_0_on_equal_servers_and_1_with_its_findings(tmp_path: Path) -> None:
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    try:
        await seed(old.url, "a", "b")
        await seed(new.url, "a", "b")
        code, out, _ = await invoke("compare", "sweep", "--old", old.url, "--new", new.url)
        assert code == 0, out
        assert "matched" in out
        await seed(new.url, "c")
        code, out, _ = await invoke(
            "compare", "sweep", "--old", old.url, "--new", new.url, "--primary", "new", "--json"
        )
    finally:
        await new.stop()
        await old.stop()
    assert code == 1
    report = json.loads(out)
    assert (report["primary"], report["games"], report["matched"]) == ("new", 3, 2)
    (finding,) = report["findings"]
    assert (finding["game_id"], finding["missing"]) == ("c", "shadow")


async def test_sweep_without_the_secret_exits_2() -> None:
    code, _, err = await invoke(
        "compare",
        "sweep",
        "--old",
        "ws://127.0.0.1:1",
        "--new",
        "ws://127.0.0.1:2",
        **{SECRET_ENV: ""},
    )
    assert code == 2
    assert SECRET_ENV in err


async def test_backfill_cli_copies_reports_json_and_refuses_a_foreign_checkpoint(
    tmp_path: Path,
) -> None:
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    checkpoint = tmp_path / "ck.json"
    try:
        await seed(old.url, "a", "b", "c")
        args = ["backfill", "--from", old.url, "--to", new.url, "--checkpoint", str(checkpoint)]
        code, out, err = await invoke(*args, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert (report["copied"], report["equal"], report["failed"]) == (3, 0, 0)
        assert report["checkpoint"] == "c"
        code, out, _ = await invoke("backfill", "--from", old.url, "--to", new.url)
        assert code == 0
        assert "already equal" in out
        code, _, err = await invoke(
            "backfill", "--from", new.url, "--to", old.url, "--checkpoint", str(checkpoint)
        )
        assert code == 2
        assert "records a copy" in err
    finally:
        await new.stop()
        await old.stop()


async def test_backfill_cli_exits_1_when_a_game_fails(tmp_path: Path) -> None:
    """A state larger than one frame cannot be imported: that game fails, the rest copy."""
    old = await start_legacy(tmp_path)
    new = await start_new(tmp_path)
    try:
        await seed(old.url, "a", "c")
        player = await Client.open(f"{old.url}/v1/games/big")
        await player.request(type="CONNECT", id="c", token=token("alice"))
        for chunk in range(4):
            settings = {f"k{chunk}_{n}": "x" * 1024 for n in range(16)}
            await player.send(type="STATE_UPDATE", id=f"u{chunk}", updates={"settings": settings})
            await player.until(lambda frame: frame.get("type") == "ACK")
        await player.ws.close()
        code, out, err = await invoke("backfill", "--from", old.url, "--to", new.url, "--json")
    finally:
        await new.stop()
        await old.stop()
    assert code == 1, err
    report = json.loads(out)
    assert (report["copied"], report["failed"]) == (2, 1)
    assert report["failures"][0]["game_id"] == "big"
    assert "failed big" in err  # reported as it happens, above the progress bar
