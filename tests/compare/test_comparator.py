"""The comparator's pure parts: rules, path normalisation, pairing, drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from compare.comparator import StateComparator
from compare.diffing import compare, normalise_path
from compare.pairing import Pairer
from compare.rules import RulesError, defaults, load
from compare.store import FindingStore
from proxy.tap import Tap, TapNotice, TapRecord


def state(version: int, **scores: int) -> dict:
    return {
        "type": "STATE",
        "game_id": "g1",
        "version": version,
        "state": {
            "game_id": "g1",
            "version": version,
            "scores": scores,
            "settings": {"a": "1", "b": "2"},
            "updated_at": f"2026-11-26T10:00:0{version % 10}.000Z",
        },
    }


def test_paths_are_normalised_without_ids_or_values():
    assert normalise_path("root['state']['scores']['alice']") == "root['state']['scores'][*]"
    assert normalise_path("root['games'][3]['version']") == "root['games'][*]['version']"
    assert normalise_path("root['weird key']") == "root[*]"


def test_volatile_fields_and_key_order_do_not_make_a_mismatch():
    primary = state(3, alice=1)
    shadow = state(3, alice=1)
    shadow["state"]["updated_at"] = "2030-01-01T00:00:00.000Z"
    shadow["state"]["settings"] = {"b": "2", "a": "1"}
    assert compare(primary, shadow, defaults().for_type("STATE")).equal


def test_a_real_difference_is_reported_with_its_normalised_path():
    verdict = compare(state(3, alice=1), state(3, alice=2), defaults().for_type("STATE"))
    assert not verdict.equal
    assert verdict.paths == ["root['state']['scores'][*]"]
    assert "alice" in verdict.text


def test_error_messages_are_ignored_but_codes_are_not():
    rules = defaults().for_type("ERROR")
    ok = {"type": "ERROR", "re": "1", "code": "BAD_MESSAGE", "message": "x"}
    assert compare(ok, {**ok, "message": "y"}, rules).equal
    assert not compare(ok, {**ok, "code": "INVALID_STATE"}, rules).equal


def test_rules_load_from_toml_and_reject_bad_files(tmp_path: Path):
    good = tmp_path / "rules.toml"
    good.write_text(
        '[rules."*"]\nignore_keys = ["updated_at"]\n'
        "[rules.STATE]\nexclude_regex_paths = [\"root\\\\['state'\\\\]\\\\['settings'\\\\]\"]\n"
    )
    rules = load(good)
    state_rules = rules.for_type("STATE")
    assert state_rules.exclude_regex_paths[0].endswith("$")  # anchored when loaded
    shadow = state(3, alice=1)
    shadow["state"]["settings"] = {"other": "x"}
    assert compare(state(3, alice=1), shadow, state_rules).equal
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules.STATE]\nignore_everything = ["x"]\n')
    with pytest.raises(RulesError):
        load(bad)


def test_answers_pair_by_connection_and_re_and_broadcasts_once_by_version():
    pairer = Pairer(timeout=5)
    assert pairer.add("primary", {"type": "ACK", "re": "u", "version": 2}, 0, "g1", 1) is None
    assert pairer.add("shadow", {"type": "ACK", "re": "u", "version": 2}, 0, "g1", 2) is None
    pair = pairer.add("shadow", {"type": "ACK", "re": "u", "version": 2}, 0, "g1", 1)
    assert pair is not None
    assert (pair.kind, pair.key) == ("answer", "u")
    assert pairer.add("primary", state(2), 0, "g1", 1) is None
    assert pairer.add("primary", state(2), 0, "g1", 2) is None  # second copy ignored
    pair = pairer.add("shadow", state(2), 0, "g1", 2)
    assert pair is not None
    assert pair.kind == "broadcast"
    assert pairer.add("shadow", state(2), 0, "g1", 1) is None  # its second copy too


def test_a_frame_left_alone_becomes_unpaired_with_the_missing_side():
    pairer = Pairer(timeout=5)
    pairer.add("primary", state(4), 0.0, "g1", 1)
    assert pairer.expire(1.0) == []
    (pair,) = pairer.expire(10.0)
    assert (pair.missing, pair.kind) == ("shadow", "broadcast")


def test_not_mirrored_frames_expect_no_pair():
    pairer = Pairer(timeout=5)
    pairer.not_mirrored(1, "limited")
    rate_limited = {"type": "ERROR", "re": "limited", "code": "RATE_LIMITED"}
    assert pairer.add("primary", rate_limited, 0.0, "g1", 1) is None
    assert pairer.expire(100.0) == []


def record(role: str, msg: dict, conn: int = 1) -> TapRecord:
    return TapRecord(
        conn, "upstream", role, "old" if role == "primary" else "new", 0.0, "g1", "", msg
    )


@pytest.fixture
def comparator(tmp_path: Path) -> StateComparator:
    return StateComparator(
        Tap(), defaults(), FindingStore(tmp_path / "f.db"), CollectorRegistry(), pair_timeout=5
    )


def test_drift_counts_one_finding_per_game(comparator: StateComparator):
    for version in (2, 3, 4):
        comparator.process(record("primary", state(version, alice=version)))
        comparator.process(record("shadow", state(version, alice=version + 1)))
    assert comparator.store.count() == 1
    assert comparator.counts[("broadcast", "mismatch")] == 1
    assert comparator.counts[("broadcast", "diverged")] == 2
    assert comparator.status()["diverged"] == ["g1"]
    (finding,) = comparator.store.latest()
    assert finding["paths"] == ["root['state']['scores'][*]"]
    assert finding["versions"] == {"primary": 2, "shadow": 2}


def test_states_read_at_different_versions_are_not_compared(comparator: StateComparator):
    primary = {**state(5, alice=1), "re": "g"}
    shadow = {**state(6, alice=9), "re": "g"}
    comparator.process(record("primary", primary))
    comparator.process(record("shadow", shadow))
    assert comparator.store.count() == 0
    assert comparator.metrics.skipped.labels("answer", "version_skew")._value.get() == 1


def test_a_game_not_comparable_is_not_judged(comparator: StateComparator):
    comparator.process(TapNotice("not_comparable", "overflow", "g1", 1))
    comparator.process(record("primary", state(2, alice=1)))
    comparator.process(record("shadow", state(2, alice=7)))
    assert comparator.store.count() == 0
    assert comparator.status()["not_comparable"] == ["g1"]


def test_volatile_fields_and_key_order_are_not_differences_but_types_and_values_are():
    rules = defaults().for_type("STATE")
    base = state(3, alice=1)
    inner = base["state"]
    cases = [
        ({**base, "state": {**inner, "updated_at": "2026-11-27T00:00:00.000Z"}}, True),
        ({**base, "state": {**inner, "settings": {"b": "2", "a": "1"}}}, True),  # key order
        (state(3, alice=2), False),  # a real difference
        ({**base, "state": {**inner, "settings": {"a": "1", "b": "3"}}}, False),
        ({**base, "version": 3.0}, False),  # 3 and 3.0 differ on the wire
        ({**base, "state": {**inner, "note": '"updated_at":"x"'}}, False),
    ]
    assert [compare(base, shadow, rules).equal for shadow, _ in cases] == [
        expected for _, expected in cases
    ]


def test_frames_straddling_a_flip_still_pair_old_with_new():
    """Sent before a flip, received after it: both copies carry the same role label; they
    must pair by upstream, not be taken for two frames of one side."""
    pairer = Pairer(timeout=5)
    # before the flip the new server was the shadow; its broadcast arrives first
    assert pairer.add("shadow", state(7), 0.0, "g1", 1, "new") is None
    # the old server's copy arrives after the flip: old is the shadow now
    pair = pairer.add("shadow", state(7), 0.1, "g1", 1, "old")
    assert pair is not None
    assert pair.kind == "broadcast"
    assert pairer.expire(100.0) == []


def test_frames_dropped_for_the_pairers_bound_are_exported(tmp_path: Path):
    """Past `remember` waiting frames the pairer drops the oldest, uncompared: on-call sees
    how many (`stateshift_compare_dropped_total`, and `pairs_dropped` in the status)."""
    registry = CollectorRegistry()
    comparator = StateComparator(Tap(), defaults(), FindingStore(tmp_path / "f.db"), registry)
    comparator.pairer.remember = 3
    for n in range(5):  # answers whose partner never comes
        comparator.process(record("primary", {"type": "HEARTBEAT_ACK", "re": f"h{n}"}))
    assert registry.get_sample_value("stateshift_compare_dropped_total") == 2
    assert comparator.status()["pairs_dropped"] == 2
