"""Two switches at once (two operators, two scripts, a watch's rollback and a manual flip):
each read the fleet's route, then prepared its own. The one that came second undid the
first without anyone deciding so, and both reported success: an operator was told "primary
old" while the fleet ended on the new server (a CLI audit's finding). A switch now sends
the route it read (`expect`); a proxy whose route changed since refuses it (`changed`).
Real proxies and servers on loopback."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.admin import CommandError
from proxy.route import Route
from switchover import cli as cli_module
from switchover.manager import Fleet, target
from tests.switchover.conftest import ADMIN, Stack, cli


async def test_a_switch_prepared_after_another_changed_the_route_is_refused(stack: Stack):
    proxy = await stack.add_proxy()
    async with Fleet([proxy.admin], ADMIN) as fleet:
        each = fleet.each

        async def meanwhile(command: str, *args: Any, **fields: Any) -> Any:
            if command == "PREPARE":  # another operator's flip lands between our reads
                prepared = await proxy.board.prepare(Route(primary="new"))
                await proxy.board.commit(prepared.token)
            return await each(command, *args, **fields)

        fleet.each = meanwhile  # type: ignore[method-assign]
        report = await fleet.switch(target("old", 50.0), reason="ramp back")
    assert not report.ok
    assert [p.reason for p in report.proxies] == ["changed"], report.to_dict()
    assert proxy.route() == Route(primary="new")  # the other operator's flip stands


async def test_a_proxy_refuses_a_prepare_that_expects_another_route(stack: Stack):
    proxy = await stack.add_proxy()
    flip = {"target": {"primary": "new"}, "expect": {"primary": "new", "mirroring": True}}
    with pytest.raises(CommandError) as refused:
        await proxy.board._prepare("ops", flip)
    assert refused.value.code == "FAILED"
    assert refused.value.extra["reason"] == "changed"
    assert proxy.route() == Route(primary="old")
    # what it expects is what it finds: prepared as before
    ok = {"target": {"primary": "new"}, "expect": {"primary": "old", "mirroring": True}}
    answer = await proxy.board._prepare("ops", ok)
    await proxy.board.commit(answer["prepared"]["token"])
    assert proxy.route() == Route(primary="new")


async def test_a_switch_that_lands_during_a_flips_readiness_check_stops_the_flip(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """A re-run of the rehearsal showed the guard above too narrow: each command read the
    route again just before its PREPARE, so a rollback that committed during a flip's
    readiness check (about a second) was taken as the flip's starting point and undone,
    both commands saying ok. The route a command read when it started is what it expects."""
    proxy = await stack.add_proxy()
    gatekeep = cli_module._gatekeep

    async def meanwhile(*args: Any, **kwargs: Any) -> int | None:
        prepared = await proxy.board.prepare(Route(primary="old", ramp=50.0))  # another one
        await proxy.board.commit(prepared.token)
        return await gatekeep(*args, **kwargs)

    monkeypatch.setattr(cli_module, "_gatekeep", meanwhile)
    outcome = await cli("flip", "--proxy", proxy.admin, "--force", "--json")
    assert outcome.code == 1, outcome.doc
    assert [p["reason"] for p in outcome.doc["switch"]["proxies"]] == ["changed"]
    assert proxy.route() == Route(primary="old", ramp=50.0)  # the other switch stands


async def test_a_watched_flip_that_another_switch_undid_says_so(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    """A rehearsal: Alice's `flip --auto-rollback` was watching when Bob rolled the fleet
    back. Her watch went on judging the old server's figures and ended "switched; no breach",
    exit 0, with every proxy on the old server. A round that finds a proxy's route changed
    ends the watch and says so (exit 1: the flip did not stick)."""
    proxy = await stack.add_proxy()
    watch = Fleet.watch

    async def rolled_back_first(self: Fleet, *args: Any, **kwargs: Any) -> Any:
        # Bob's rollback, through the control protocol, before the watch's first round
        report = await self.switch(target("old"), reason="bob's rollback", kind="rollback")
        assert report.ok, report.to_dict()
        return await watch(self, *args, **kwargs)

    monkeypatch.setattr(Fleet, "watch", rolled_back_first)
    outcome = await cli(
        "flip", "--proxy", proxy.admin, "--force", "--auto-rollback", "2", "--check-every", "0.2",
        "--json",
    )  # fmt: skip
    assert outcome.code == 1, outcome.stdout
    assert "the route changed" in outcome.doc["message"], outcome.doc
    assert "nothing rolled back" in outcome.doc["message"], outcome.doc
    assert proxy.route() == Route(primary="old")
