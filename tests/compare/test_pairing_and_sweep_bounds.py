"""Pairing's bounds and expiry order with reused request ids (pure: `expire` is driven with
explicit times), and what sweeps report: paths rewritten from the state, values left as they
are (two real servers), each game's own primary under a ramp (the whole stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compare.admin import AdminClient
from compare.pairing import PRIMARY, SHADOW, Pair, Pairer
from compare.rules import defaults
from compare.sweep import assess, sweep
from legacy.service import LegacyServer
from proxy.route import Route
from server.app import StateServer
from tests.compare.conftest import game_state
from tests.proxy.conftest import start_stack, token

ADMIN = token("ops", "admin")
RULES = defaults().for_type("STATE")
#: what a sweep's paths are rewritten from: a string a game may hold as a value, too
WRAPPED = "root['state']"


def heartbeat_ack(n: int) -> dict[str, Any]:
    """The answer to the n-th heartbeat of a client that sends every one with id `hb`."""
    return {"type": "HEARTBEAT_ACK", "re": "hb", "server_time": f"2026-11-26T10:00:{n:02}.000Z"}


def ack(re_id: str, version: int) -> dict[str, Any]:
    return {"type": "ACK", "re": re_id, "version": version}


def primaries(pairs: list[Pair]) -> list[dict[str, Any] | None]:
    return [pair.primary for pair in pairs]


# ------------------------------------------------------------------ pairing: the bound


def test_a_reused_id_whose_partner_never_answers_is_bounded_by_remember() -> None:
    """A client sends every heartbeat with id "hb" and its shadow never answers: each
    answer of the primary queued behind the first (`_Waiting.more`), outside `remember`,
    so the pairer grew with every heartbeat (and `len`, the pending gauge, said 1)."""
    pairer = Pairer(timeout=10.0, remember=4)
    answers = [heartbeat_ack(n) for n in range(12)]
    for n, answer in enumerate(answers):
        assert pairer.add("primary", answer, n * 0.1, "g1", 1) is None
    assert len(pairer) == 4
    assert pairer.dropped == 8
    # the oldest were dropped; the newest still wait and expire as unpaired, oldest first
    expired = pairer.expire(100.0)
    assert primaries(expired) == answers[8:]
    assert {pair.missing for pair in expired} == {"shadow"}
    assert len(pairer) == 0


def test_the_bound_counts_every_waiting_frame_and_drops_the_oldest_first() -> None:
    """Frames of a reused id and of other ids share one bound; the oldest go first."""
    pairer = Pairer(timeout=10.0, remember=3)
    pairer.add("primary", heartbeat_ack(0), 0.0, "g1", 1)
    pairer.add("primary", ack("u1", 2), 0.1, "g1", 1)
    pairer.add("primary", heartbeat_ack(1), 0.2, "g1", 1)  # "hb" reused
    pairer.add("primary", ack("u2", 3), 0.3, "g1", 1)
    assert len(pairer) == 3
    assert primaries(pairer.expire(100.0)) == [ack("u1", 2), heartbeat_ack(1), ack("u2", 3)]


def test_answers_dropped_for_the_bound_take_their_late_partners_with_them() -> None:
    """The shadow lags five answers of a reused id behind under a bound of three: the two
    oldest primary answers are dropped, and the shadow's first two answers with them (not
    paired with the primary's third, which would pair every later answer of the id with
    the wrong partner and call the two servers different)."""
    pairer = Pairer(timeout=10.0, remember=3)
    for version in range(5):
        assert pairer.add("primary", ack("u", version), version * 0.1, "g1", 1) is None
    pairs = [pairer.add("shadow", ack("u", version), 1.0, "g1", 1) for version in range(5)]
    assert pairs[:2] == [None, None]
    assert [(p.primary, p.shadow) for p in pairs[2:] if p is not None] == [
        (ack("u", version), ack("u", version)) for version in (2, 3, 4)
    ]
    assert pairer.expire(100.0) == []
    assert len(pairer) == 0


def test_a_flood_of_not_mirrored_notices_is_bounded_by_remember() -> None:
    """Notices whose primary answer never comes (it was dropped with its game by a resync
    before the notice) were kept forever: the set of expected-unmirrored answers is bounded
    like the rest, the oldest forgotten first."""
    pairer = Pairer(timeout=10.0, remember=3)
    for n in range(6):
        pairer.not_mirrored(1, f"skipped{n}")
    # the newest three are still expected without a pair
    for n in range(3, 6):
        assert pairer.add("primary", ack(f"skipped{n}", n), 0.0, "g1", 1) is None
    assert len(pairer) == 0
    # the oldest were forgotten: an answer to one of them waits for a partner again
    pairer.add("primary", ack("skipped0", 0), 0.0, "g1", 1)
    assert len(pairer) == 1


def test_a_reused_ids_partner_dropped_by_a_resync_is_dropped_even_after_another_answer() -> None:
    """A resync drops the primary's answer to heartbeat 1 (`forget_game`); the primary
    answers heartbeat 2 before the shadow answers heartbeat 1. That second primary answer
    cancelled the record of the dropped one: the shadow's late answer to heartbeat 1 paired
    with the primary's to heartbeat 2, and the shadow's answer to heartbeat 2 waited alone
    and expired as a false `unpaired` finding (the primary "never sent it")."""
    pairer = Pairer(timeout=10.0)
    pairer.add("primary", heartbeat_ack(1), 0.0, "g1", 1)
    pairer.forget_game("g1")
    assert pairer.add("primary", heartbeat_ack(2), 1.0, "g1", 1) is None
    assert pairer.add("shadow", heartbeat_ack(1), 1.1, "g1", 1) is None  # its partner is gone
    pair = pairer.add("shadow", heartbeat_ack(2), 1.2, "g1", 1)
    assert pair is not None
    assert (pair.primary, pair.shadow) == (heartbeat_ack(2), heartbeat_ack(2))
    assert pairer.expire(100.0) == []


# ------------------------------------------------------------------ pairing: expiry order


def test_the_next_answer_of_a_reused_id_expires_on_its_own_age() -> None:
    """When the first answer of a reused id expired, the next one was moved to the end of
    the queue, behind younger frames of other ids: `expire` stops at the first young frame,
    so an answer 10.5 s alone under a 10 s timeout was not reported."""
    pairer = Pairer(timeout=10.0)
    pairer.add("primary", heartbeat_ack(0), 0.0, "g1", 1)
    pairer.add("primary", heartbeat_ack(1), 1.0, "g1", 1)  # "hb" reused
    pairer.add("primary", ack("u", 2), 5.0, "g1", 1)
    assert primaries(pairer.expire(10.5)) == [heartbeat_ack(0)]
    assert primaries(pairer.expire(11.5)) == [heartbeat_ack(1)]
    assert pairer.expire(15.0) == []  # alone for exactly the timeout: not yet
    assert primaries(pairer.expire(15.5)) == [ack("u", 2)]


def test_unpaired_frames_are_reported_oldest_first_across_reused_ids() -> None:
    pairer = Pairer(timeout=10.0)
    pairer.add("primary", heartbeat_ack(0), 0.0, "g1", 1)
    pairer.add("shadow", ack("u", 2), 0.5, "g1", 1)
    pairer.add("primary", heartbeat_ack(1), 1.0, "g1", 1)  # "hb" reused
    pairer.add("shadow", ack("v", 3), 2.0, "g1", 1)
    expired = pairer.expire(100.0)
    assert [(pair.key, pair.primary or pair.shadow) for pair in expired] == [
        ("hb", heartbeat_ack(0)),
        ("u", ack("u", 2)),
        ("hb", heartbeat_ack(1)),
        ("v", ack("v", 3)),
    ]
    assert [pair.missing for pair in expired] == ["shadow", "primary", "shadow", "primary"]


def test_a_reused_id_still_pairs_in_order_after_its_first_answer_expired() -> None:
    pairer = Pairer(timeout=10.0)
    pairer.add("primary", ack("u", 2), 0.0, "g1", 1)
    pairer.add("primary", ack("u", 3), 5.0, "g1", 1)  # "u" reused
    assert primaries(pairer.expire(12.0)) == [ack("u", 2)]
    pair = pairer.add("shadow", ack("u", 3), 12.1, "g1", 1)
    assert pair is not None
    assert (pair.primary, pair.shadow) == (ack("u", 3), ack("u", 3))
    assert len(pairer) == 0


# ------------------------------------------------------------------ sweeps: paths, not values


def test_a_value_reading_like_a_path_is_not_rewritten() -> None:
    """Paths are rewritten from the frame to the state; a setting whose value (or key)
    reads `root['state']` was rewritten too, so the finding misquoted the game."""
    primary = game_state("g1", note=WRAPPED, **{WRAPPED: "a"})
    shadow = game_state("g1", note="plain", **{WRAPPED: "b"})
    outcome = assess("g1", primary, shadow, RULES)
    assert outcome.finding is not None
    verdict = outcome.finding.verdict
    assert verdict.paths == ["root['settings'][*]"]
    changed = verdict.diff["values_changed"]
    assert changed["root['settings']['note']"] == {"old_value": WRAPPED, "new_value": "plain"}
    assert changed[f"root['settings'][\"{WRAPPED}\"]"] == {"old_value": "a", "new_value": "b"}
    assert verdict.text.splitlines() == [
        f"Value of root['settings']['note'] changed from \"{WRAPPED}\" to \"plain\".",
        f'Value of root[\'settings\']["{WRAPPED}"] changed from "a" to "b".',
    ]


def test_a_game_on_one_side_only_is_shown_as_the_state_not_its_frame() -> None:
    """The state was compared inside a frame (`{"state": …}`): a game one side lacks was
    shown as that wrapper, not as the game."""
    only = game_state("g1", note=WRAPPED)
    for primary, shadow, key in ((only, None, "old_value"), (None, only, "new_value")):
        outcome = assess("g1", primary, shadow, RULES)
        assert outcome.finding is not None
        verdict = outcome.finding.verdict
        assert verdict.paths == ["root"]
        assert verdict.diff["type_changes"]["root"][key] == only
        assert "{'state'" not in verdict.text
        assert f'"{WRAPPED}"' in verdict.text


async def test_a_sweep_of_real_servers_reports_a_games_values_as_they_are(
    servers: tuple[LegacyServer, StateServer],
) -> None:
    """Both servers hold a game whose settings mention `root['state']` and differ, and a
    game only the new server has: the findings' diffs and texts quote the games exactly."""
    old, new = servers
    async with AdminClient(old.url, ADMIN) as admin:
        await admin.import_state(game_state("g1", note=WRAPPED, mode="blitz"))
    async with AdminClient(new.url, ADMIN) as admin:
        await admin.import_state(game_state("g1", note=WRAPPED, mode="classic"))
        await admin.import_state(game_state("g2", note=f"see {WRAPPED}['scores']"))
    async with AdminClient(old.url, ADMIN) as p, AdminClient(new.url, ADMIN) as s:
        report = await sweep(p, s, defaults())
    findings = {finding.game_id: finding for finding in report.findings}
    assert set(findings) == {"g1", "g2"}
    g1 = findings["g1"]
    assert g1.verdict.paths == ["root['settings'][*]"]
    assert g1.verdict.diff == {
        "values_changed": {
            "root['settings']['mode']": {"old_value": "blitz", "new_value": "classic"}
        }
    }
    assert g1.primary_state is not None
    assert g1.primary_state["settings"]["note"] == WRAPPED
    g2 = findings["g2"]
    assert g2.missing == "primary"
    assert g2.shadow_state is not None
    assert g2.shadow_state["settings"]["note"] == f"see {WRAPPED}['scores']"
    assert g2.verdict.diff["type_changes"]["root"]["new_value"] == g2.shadow_state
    assert f"see {WRAPPED}['scores']" in g2.verdict.text
    assert report.to_json()["findings"][1]["diff"] == g2.verdict.diff


# ------------------------------------------------------------------ sweeps under a ramp


@pytest.mark.parametrize(
    ("route", "games_primary"),
    [
        (Route(primary="old"), "old"),
        (Route(primary="old", ramp=100.0), "new"),
        (Route(primary="new", ramp=0.0), "old"),
    ],
    ids=["no-ramp", "ramp-all-to-new", "primary-new-ramp-none-to-new"],
)
async def test_a_proxy_sweep_names_each_divergent_games_own_primary_once(
    tmp_path: Path, route: Route, games_primary: str
) -> None:
    """`LiveComparison.sweep_now` reads every game with `route.primary` as the primary
    (`sweep` knows no ramp) and swaps a finding's sides once, for games whose own primary
    is the other server: no finding is swapped twice, whatever the route."""
    async with start_stack(tmp_path, comparator=True) as stack:
        stack.proxy.set_route(route)
        assert stack.proxy.route.primary_for("r1") == games_primary
        states = {"old": game_state("r1", mode="blitz"), "new": game_state("r1", mode="classic")}
        async with AdminClient(stack.old.url, ADMIN) as admin:
            await admin.import_state(states["old"])
        async with AdminClient(stack.new.url, ADMIN) as admin:
            await admin.import_state(states["new"])
        sweep_summary = await stack.live.sweep_now()
        assert sweep_summary["findings"] == 1
        (summary,) = stack.live.comparator.store.latest()
        finding = stack.live.comparator.store.get(summary["id"])
    assert finding is not None
    shadow_of_game = "new" if games_primary == "old" else "old"
    assert finding["primary"] == states[games_primary]
    assert finding["shadow"] == states[shadow_of_game]
    assert finding["diff"] == {
        "values_changed": {
            "root['settings']['mode']": {
                "old_value": states[games_primary]["settings"]["mode"],
                "new_value": states[shadow_of_game]["settings"]["mode"],
            }
        }
    }


def test_an_answer_forgotten_before_its_shadow_was_lost_does_not_swallow_the_next_of_its_id():
    """`forget_game` (a gap, a divergence, a resync) drops the primary's answer to `u` and
    remembers that the shadow's answer to it is still to come, to drop it too. Then the
    connection's shadow is lost (`forget_conn`): that answer will never come. The shadow is
    revived and the game resynced; the client reuses its id `u`. Under review the stale
    record swallowed the revived shadow's first answer: the primary's was reported unpaired
    (a false finding) and every later answer of `u` paired with the wrong partner."""
    pairer = Pairer(timeout=10.0)
    assert pairer.add(PRIMARY, ack("u", 3), 0.0, "g", 1, "old") is None
    pairer.forget_game("g")
    pairer.forget_conn(1)
    assert pairer.add(PRIMARY, ack("u", 5), 1.0, "g", 1, "old") is None
    assert pairer.add(PRIMARY, ack("u", 6), 1.0, "g", 1, "old") is None
    first = pairer.add(SHADOW, ack("u", 5), 1.0, "g", 1, "new")
    second = pairer.add(SHADOW, ack("u", 6), 1.0, "g", 1, "new")
    assert first is not None, "the revived shadow's answer was swallowed"
    assert second is not None
    assert (first.version(PRIMARY), first.version(SHADOW)) == (5, 5)
    assert (second.version(PRIMARY), second.version(SHADOW)) == (6, 6)
    assert pairer.expire(100.0) == []


def broadcast(version: int) -> dict[str, Any]:
    body = {"game_id": "g", "version": version, "scores": {"alice": version}}
    return {"type": "STATE", "game_id": "g", "version": version, "state": body}


def test_the_late_partner_of_a_broadcast_dropped_for_the_bound_is_not_a_finding():
    """Past `remember` the oldest waiting frame is dropped, 'not a finding (its partner may
    well be on its way, only late under a flood)'. For an answer the late partner is dropped
    too; under review a broadcast's was kept, waited alone, and expired as an unpaired
    finding (missing primary): the game diverged for a frame the pairer itself threw away."""
    pairer = Pairer(timeout=1.0, remember=3)
    for version in (1, 2, 3, 4):
        assert pairer.add(PRIMARY, broadcast(version), 0.0, "g", 1, "old") is None
    assert pairer.dropped == 1  # the primary's v1
    for version in (2, 3, 4):
        assert pairer.add(SHADOW, broadcast(version), 0.5, "g", 1, "new") is not None
    assert pairer.add(SHADOW, broadcast(1), 0.5, "g", 1, "new") is None  # late, under the flood
    assert pairer.expire(100.0) == [], "the dropped broadcast's partner became a finding"


def test_the_late_partner_of_a_broadcast_dropped_with_its_game_is_not_a_finding():
    """A resync ends with `forget_game`. A broadcast the primary sent after the resync's
    import (above its floor) and before that drop was dropped, and the slow shadow's copy
    came later, alone: an unpaired finding (missing primary) that resynced the game, whose
    next resync did the same, once per game every `timeout` (a rehearsal's healthy flip was
    rolled back for them: a restarted old server with `--fault slow:50` as the shadow)."""
    pairer = Pairer(timeout=1.0)
    assert pairer.add(PRIMARY, broadcast(7), 0.0, "g", 1, "new") is None
    pairer.forget_game("g")
    assert pairer.add(SHADOW, broadcast(7), 0.5, "g", 2, "old") is None  # the shadow's, late
    assert pairer.add(SHADOW, broadcast(7), 0.5, "g", 1, "old") is None  # another copy of it
    assert pairer.expire(100.0) == [], "the dropped broadcast's partner became a finding"
    # the game pairs on as before
    assert pairer.add(PRIMARY, broadcast(8), 101.0, "g", 1, "new") is None
    pair = pairer.add(SHADOW, broadcast(8), 101.0, "g", 1, "old")
    assert pair is not None
    assert (pair.version(PRIMARY), pair.version(SHADOW)) == (8, 8)
    assert pairer.expire(200.0) == []


def test_broadcasts_at_or_below_a_resyncs_floor_take_no_room_from_other_records():
    """A resync's drop remembers only what can still come and be wrongly judged: at or
    below the game's floor the comparator skips a broadcast's partner anyway (and the order
    sends the shadow no copy of what the import holds). Remembered too, such broadcasts
    filled the bounded record and pushed out an answer's, whose late partner then expired
    as an unpaired finding (review of this session's change)."""
    pairer = Pairer(timeout=1.0, remember=3)
    assert pairer.add(PRIMARY, ack("u", 1), 0.0, "a", 1, "old") is None
    pairer.forget_game("a")  # the shadow's answer to `u` is still to come: remembered
    for version in (3, 4, 5):
        assert pairer.add(PRIMARY, broadcast(version), 0.0, "g", 2, "old") is None
    pairer.forget((), {"g"}, {"g": 5})  # g resynced at version 5
    assert pairer.add(SHADOW, ack("u", 1), 0.5, "a", 1, "new") is None
    assert pairer.expire(100.0) == [], "the answer's record was pushed out"
