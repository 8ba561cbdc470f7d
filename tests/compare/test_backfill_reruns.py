"""Backfill reruns (after a complete run, with a checkpoint that cannot be written, past a
game that always fails) and the compare CLI's rules table, against real servers.

Each test names the bug it proves and failed before its fix. Servers run
in-process on 127.0.0.1 (port 0), the CLI as a subprocess where exit codes matter."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from compare.admin import AdminClient
from compare.backfill import Checkpoint, GameResult, backfill
from legacy.service import LegacyServer
from server.app import StateServer
from tests.compare.test_backfill import play, state
from tests.proxy.conftest import token
from tests.support import ROOT, cli_env, timeout

ADMIN = token("ops", "admin")


async def cli(*args: str) -> tuple[int, str, str]:
    """`stateshift ARGS…` as a user runs it: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stateshift",
        *args,
        env=cli_env(COLUMNS="200"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout(120))
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def seed(url: str, *game_ids: str, version: int = 3, **changes: Any) -> None:
    async with AdminClient(url, ADMIN) as admin:
        for game_id in game_ids:
            await admin.import_state(state(game_id, version, **changes))


async def states(url: str) -> dict[str, Any]:
    async with AdminClient(url, ADMIN) as admin:
        return {g: await admin.get_state(g) for g in await admin.listing()}


# ------------------------------------------------------------------ findings


async def test_rerun_with_the_runbooks_checkpoint_after_a_complete_run_copies_nothing(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    """BUG: a completed run leaves its checkpoint at the last game, so rerunning the
    runbook's command (`--checkpoint …`) resumes after the last game and looks at nothing:
    games changed since, and games created since with lower ids, are silently skipped while
    the run reports success (exit 0, 0 failed). The runbooks promise a rerun "only imports
    games that differ" and "refreshes" the target."""
    old, new = servers
    await seed(old.url, "b", "c", "d")
    checkpoint = tmp_path / "backfill.ckpt"
    args = ["backfill", "--from", old.url, "--to", new.url, "--checkpoint", str(checkpoint)]
    code, out, err = await cli(*args, "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == 3

    await play(old.url, "c")  # the source's game changes (versions move on)
    await seed(old.url, "a")  # a game created since, before the checkpoint in id order
    code, out, err = await cli(*args, "--json")
    report = json.loads(out)
    assert await states(new.url) == await states(old.url), (code, report)
    assert report["copied"] == 2


async def test_a_checkpoint_in_a_missing_directory_is_dropped_silently_with_exit_0(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    """BUG: when the checkpoint cannot be written (its directory does not exist yet, e.g. a
    fresh host without /var/lib/stateshift), the final save's OSError is suppressed: the
    run exits 0 and never says the checkpoint is missing (a run longer than SAVE_EVERY
    instead dies with a raw traceback, exit 1). Either way the operator believes the run is
    resumable. An unusable checkpoint is a usage error: exit 2, naming the file."""
    old, new = servers
    await seed(old.url, "a", "b")
    checkpoint = tmp_path / "missing-dir" / "backfill.ckpt"
    code, out, err = await cli(
        "backfill", "--from", old.url, "--to", new.url, "--checkpoint", str(checkpoint), "--json"
    )
    assert not checkpoint.exists()
    assert code == 2, (code, out, err)
    assert "backfill.ckpt" in err


async def test_a_game_that_always_fails_stops_limited_batches_from_ever_continuing(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    """BUG: a game that can never be imported (a state over one 64 KiB frame, note 39) holds
    the checkpoint before it for good. With `--limit` batches every rerun starts again at
    that game and handles the same batch: the report says "more games follow (rerun to
    continue)", yet no number of reruns reaches the games after it."""
    old, new = servers
    await seed(old.url, "a", "c", "d", "e")
    await play(old.url, "b", settings_chunks=4)  # 64 settings of 1 KiB: too big to import
    mark = Checkpoint(tmp_path / "backfill.ckpt", old.url, new.url)
    reports = []
    for _ in range(4):  # "rerun to continue", more times than there are batches
        async with AdminClient(old.url, ADMIN) as s, AdminClient(new.url, ADMIN) as t:
            reports.append(await backfill(s, t, checkpoint=mark, limit=2))
    assert [r.failures[0].game_id for r in reports if r.failures][:1] == ["b"]
    copied = await states(new.url)
    assert "e" in copied, [r.to_json() for r in reports]


async def test_games_being_retried_when_a_run_stops_stay_in_the_checkpoint(
    servers: tuple[LegacyServer, StateServer], tmp_path: Path
) -> None:
    """The checkpoint's retry list is kept exact while failed games are retried: one that
    was copied leaves it, one not finished when the run stops stays in it (the list was
    written from the games that had finished failing only, when the frontier moved: a game
    still being retried then was before `after` and no later run retried it)."""
    old, new = servers
    await seed(old.url, "a", "b", "z")
    mark = Checkpoint(tmp_path / "backfill.ckpt", old.url, new.url)
    mark.save("y", ["a", "b"])  # a and b failed in an earlier run; it stopped after y

    class Stopped(Exception):
        """The run stops after the first retried game (as when the listing is lost)."""

    def interrupt(result: GameResult) -> None:
        raise Stopped

    async with AdminClient(old.url, ADMIN) as s, AdminClient(new.url, ADMIN) as t:
        with pytest.raises(Stopped):
            await backfill(s, t, checkpoint=mark, concurrency=1, on_result=interrupt)
    after, retry, complete = mark.load_all()
    assert (after, retry, complete) == ("y", ["b"], False)  # a was copied, b still to retry
    assert "a" in await states(new.url)


@pytest.mark.parametrize(
    "regex",
    [
        r"root\['state'\]\['settings'\]\['debug_[a-z]+'\]",  # a character class: vanishes
        r"root\['state'\]\['settings'\]\['x[/]'\]",  # a closing-tag look-alike: crashes
    ],
)
async def test_compare_rules_table_shows_each_regex_exactly_as_in_force(
    tmp_path: Path, regex: str
) -> None:
    """BUG: `compare rules` (for people) passes each rule's value to rich as markup: `\\[`
    is shown as `[`, a character class such as `[a-z]` is taken for a style tag and
    disappears, and `[/]` raises MarkupError (a traceback, exit 1; documented: 0 ok, 2 bad
    file). The runbooks tell operators to check with this very table that a regex hides
    only what they meant; it shows another regex than the one in force (--json is right)."""
    path = tmp_path / "rules.toml"
    path.write_text(
        '[rules."*"]\nignore_keys = ["updated_at"]\n'
        f"[rules.STATE]\nexclude_regex_paths = [{json.dumps(regex)}]\n"
    )
    code, out, err = await cli("compare", "rules", "--rules", str(path), "--json")
    assert code == 0, err
    (value,) = [r["value"] for r in json.loads(out)["rules"] if r["kind"] != "ignore_keys"]
    code, out, err = await cli("compare", "rules", "--rules", str(path))
    assert code == 0, err[-500:]
    assert value in out, out
