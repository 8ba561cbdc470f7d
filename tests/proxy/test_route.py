"""The route as a value (who is primary for a game, how it is told to people), and how
switchover events are counted."""

from __future__ import annotations

import pytest

from proxy.route import Route, ramp_bucket


def test_a_ramp_sends_a_stable_share_of_games_to_the_new_server():
    games = [f"g{n}" for n in range(2000)]
    route = Route(primary="old", ramp=25.0)
    share = sum(route.primary_for(g) == "new" for g in games) / len(games)
    assert 0.2 < share < 0.3
    assert [route.primary_for(g) for g in games] == [route.primary_for(g) for g in games]
    assert all(Route(ramp=100.0).primary_for(g) == "new" for g in games[:50])
    assert Route(primary="new", ramp=0.0).primary_for(None) == "new"  # admin: `primary`
    assert all(0 <= ramp_bucket(g) < 10_000 for g in games)


@pytest.mark.parametrize(
    ("route", "text"),
    [
        (Route(), "primary is old, mirroring"),
        (Route(primary="old", ramp=12.5), "primary is old, ramp 12.5% to new, mirroring"),
        (Route(primary="new", mirroring=False), "primary is new, not mirroring (finalized)"),
    ],
)
def test_a_route_is_described_whole_ramp_and_mirroring_included(route: Route, text: str):
    """What `stateshift proxy` prints when a persisted route overrides its flags: a ramp or
    a finalize persisted must be told too, not only a different primary."""
    assert route.describe() == text
    assert Route.from_dict(route.to_dict()) == route


def test_each_switchover_kind_the_cli_records_is_counted_as_itself():
    """The dashboards' annotation shows `kind`: an auto-rollback must not read `other`."""
    from proxy.metrics import ProxyMetrics

    metrics = ProxyMetrics()
    for kind in ("check", "flip", "rollback", "auto-rollback", "ramp", "finalize", "whatever"):
        metrics.switch_event(kind, "ok")
    counted = {
        sample.labels["kind"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "stateshift_switchover_events_total" and sample.value > 0
    }
    assert counted == {"check", "flip", "rollback", "auto-rollback", "ramp", "finalize", "other"}
