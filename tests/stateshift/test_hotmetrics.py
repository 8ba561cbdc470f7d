"""The per-frame metric families must read exactly like prometheus_client's own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from stateshift.hotmetrics import HotCounter, HotHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without prometheus_client's `_created` series (ours has none)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


@given(
    increments=st.lists(
        st.tuples(st.sampled_from(["old", "new"]), st.integers(min_value=0, max_value=5))
    ),
    observations=st.lists(
        st.tuples(
            st.sampled_from(["primary", "shadow"]),
            st.one_of(st.sampled_from(BUCKETS), st.floats(min_value=0, max_value=3)),
        )
    ),
)
def test_the_exposition_is_prometheus_clients(
    increments: list[tuple[str, int]], observations: list[tuple[str, float]]
) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counters = (
        Counter("frames_total", "Frames.", ["upstream"], registry=theirs),
        HotCounter("frames_total", "Frames.", ["upstream"], registry=ours),
    )
    histograms = (
        Histogram("latency_seconds", "Latency.", ["role"], buckets=BUCKETS, registry=theirs),
        HotHistogram("latency_seconds", "Latency.", ["role"], buckets=BUCKETS, registry=ours),
    )
    plain = (
        Histogram("cost_seconds", "Cost.", buckets=BUCKETS, registry=theirs),
        HotHistogram("cost_seconds", "Cost.", buckets=BUCKETS, registry=ours),
    )
    for upstream, n in increments:
        for counter in counters:
            counter.labels(upstream).inc(n)
    for role, value in observations:
        for histogram in histograms:
            histogram.labels(role).observe(value)
        for one in plain:
            one.observe(value)
    assert exposition(ours) == exposition(theirs)


def test_misuse_is_refused():
    registry = CollectorRegistry()
    counter = HotCounter("a_total", "A.", ["x"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("1", "2")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("1").inc(-1)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        HotCounter("a_total", "A again.", ["x"], registry=registry)
    with pytest.raises(ValueError, match="increasing"):
        HotHistogram("h", "H.", buckets=(2.0, 1.0))
    with pytest.raises(ValueError, match="has labels"):
        HotHistogram("h", "H.", ["x"], buckets=(1.0,)).observe(1.0)
