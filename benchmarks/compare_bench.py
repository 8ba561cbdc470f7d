"""Comparator benchmark: comparisons per second and CPU per comparison, for equal and for
unequal states, through the real `StateComparator.process` path (pairing, rules, cheap
equality, DeepDiff on a mismatch, drift bookkeeping, samples store).

Run: .venv/bin/python benchmarks/compare_bench.py [--pairs N]
Writes benchmarks/results/compare.json. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from compare.comparator import StateComparator
from compare.rules import defaults
from compare.store import FindingStore
from proxy.tap import Tap, TapRecord

RESULTS = Path(__file__).parent / "results" / "compare.json"


def broadcast(game: str, version: int, scores: dict[str, int], stamp: str) -> dict[str, Any]:
    """A realistic STATE broadcast: 4 players, a few settings."""
    return {
        "type": "STATE",
        "game_id": game,
        "version": version,
        "state": {
            "game_id": game,
            "status": "active",
            "current_player": "p1",
            "scores": scores,
            "timer": dict.fromkeys(scores, 60000 - version),
            "settings": {"initial_time_ms": "60000", "mode": "blitz", "board": "standard"},
            "version": version,
            "updated_at": stamp,
        },
    }


def records(pairs: int, unequal: bool, games: int) -> list[TapRecord]:
    out = []
    for n in range(pairs):
        game = f"g{n % games}"
        version = n // games + 2
        scores = {f"p{k}": n + k for k in range(4)}
        primary = broadcast(game, version, scores, "2026-11-26T10:00:00.000Z")
        shadow_scores = dict(scores)
        if unequal:
            shadow_scores["p0"] += 1
        shadow = broadcast(game, version, shadow_scores, "2026-11-26T10:00:00.004Z")
        # the proxy hands over each frame's text and its parsed form
        p_text, s_text = orjson.dumps(primary).decode(), orjson.dumps(shadow).decode()
        out.append(TapRecord(1, "upstream", "primary", "old", 0.0, game, p_text, primary))
        out.append(TapRecord(2, "upstream", "shadow", "new", 0.0, game, s_text, shadow))
    return out


def run(pairs: int, unequal: bool, games: int) -> dict[str, float]:
    """CPU time per comparison through `process` (the store is a real SQLite file)."""
    with tempfile.TemporaryDirectory() as tmp:
        comparator = StateComparator(
            Tap(), defaults(), FindingStore(Path(tmp) / "f.db"), CollectorRegistry()
        )
        items = records(pairs, unequal, games)
        started_cpu, started = time.process_time(), time.perf_counter()
        for item in items:
            comparator.process(item)
        cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
        comparator.store.close()
    judged = sum(comparator.counts.values())
    assert judged == pairs, (judged, pairs)
    return {
        "pairs": pairs,
        "cpu_us_per_comparison": cpu / pairs * 1e6,
        "comparisons_per_s_per_core": pairs / cpu,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    args = parser.parse_args()
    results = {
        # every pair equal: the cheap path (strip volatile fields, ==)
        "equal": run(args.pairs, unequal=False, games=1000),
        # every pair unequal but games already diverged after their first finding (drift):
        # DeepDiff runs for each, one finding per game is stored
        "unequal, 1000 games": run(args.pairs // 10, unequal=True, games=1000),
        # every pair a first divergence (worst case: DeepDiff + a stored sample each)
        "unequal, all first findings": run(2000, unequal=True, games=2000),
    }
    print(f"{'case':<30} {'pairs':>8} {'CPU µs/comparison':>18} {'comparisons/s/core':>19}")
    for name, figures in results.items():
        print(
            f"{name:<30} {figures['pairs']:>8} {figures['cpu_us_per_comparison']:>18.1f} "
            f"{figures['comparisons_per_s_per_core']:>19,.0f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"python": platform.python_version(), "results": results}, indent=2) + "\n"
    )
    asyncio.run(asyncio.sleep(0))


if __name__ == "__main__":
    main()
