"""Parsing of `--fault NAME[:ARG]` specs."""

from __future__ import annotations

import pytest

from legacy.errors import ConfigError
from legacy.faults import FAULTS, Faults, parse_faults


def test_no_fault_is_a_healthy_server() -> None:
    assert parse_faults([]) == Faults()


def test_every_fault_parses() -> None:
    faults = parse_faults(
        [
            "score-delta-off-by-one",
            "drop-broadcast:0.25",
            "slow:15",
            "stall-after:3",
            "crash-after:0",
            "garbage:1",
            "close-early:2",
            "clock-skew:-5000",
            "reorder-settings",
            "refuse-auth",
        ]
    )
    assert faults == Faults(
        score_delta_off_by_one=True,
        drop_broadcast=0.25,
        slow_ms=15,
        stall_after=3,
        crash_after=0,
        garbage=1.0,
        close_early=2,
        clock_skew_ms=-5000,
        reorder_settings=True,
        refuse_auth=True,
    )
    assert faults.counts_messages
    assert set(FAULTS) == {
        "score-delta-off-by-one",
        "drop-broadcast",
        "slow",
        "stall-after",
        "crash-after",
        "garbage",
        "close-early",
        "clock-skew",
        "reorder-settings",
        "refuse-auth",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode", "unknown fault 'explode'"),
        ("slow", "needs an argument: slow:MS"),
        ("slow:fast", "MS must be an integer"),
        ("slow:-1", "at least 0"),
        ("close-early:0", "at least 1"),
        ("drop-broadcast:1.5", "P must be a number from 0 to 1"),
        ("garbage:nan", "P must be a number from 0 to 1"),
        ("refuse-auth:1", "takes no argument"),
    ],
)
def test_bad_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_faults([spec])


def test_a_fault_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        parse_faults(["slow:1", "slow:2"])
