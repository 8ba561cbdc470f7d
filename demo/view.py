"""What the demo draws: the live view (refreshed ~2/s) and the final summary.

Pure rendering of figures the scenario gathers (`Snapshot`); nothing here touches a socket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from loadgen.plan import percentile


@dataclass
class Snapshot:
    """Everything the live view shows at one instant."""

    phase: str
    elapsed: float
    duration: float
    route: Mapping[str, Any]
    proxy: Mapping[str, Any]  # the control plane's STATUS figures
    compare: Mapping[str, Any]  # the comparator's COMPARE_STATUS figures
    figures: Mapping[str, Any]  # the switchboard's readiness figures (short window)
    connected: int
    sent: int
    acked: int
    acks_per_s: float
    expected_errors: int
    unexpected_errors: int
    unexpected_closes: int
    reconnects: int
    recent_latencies: Sequence[float]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def route_text(route: Mapping[str, Any]) -> Text:
    """`primary old, mirroring to new` with the primary in colour."""
    primary = str(route.get("primary"))
    shadow = "new" if primary == "old" else "old"
    text = Text("primary ")
    text.append(primary, style="bold cyan" if primary == "old" else "bold magenta")
    if route.get("ramp") is not None:
        text.append(f", ramp {route['ramp']}% new")
    text.append(f", mirroring to {shadow}" if route.get("mirroring") else ", not mirroring")
    return text


def live_view(snap: Snapshot, width: int = 120) -> RenderableType:
    """The live view: phase and route, traffic, comparisons, mismatches by path."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("phase", Text(snap.phase, style="bold yellow"))
    head.add_row("time", f"{snap.elapsed:5.1f} s of {snap.duration:g} s of traffic")
    paused = " [bold red](paused for a switch)[/]" if snap.proxy.get("paused") else ""
    head.add_row("route", Text.assemble(route_text(snap.route), Text.from_markup(paused)))
    head.add_row(
        "proxy",
        f"{snap.proxy.get('connections', 0)} client connections, shadow connected for "
        f"{snap.proxy.get('shadow_connected', 0)}/{snap.proxy.get('mirrored_connections', 0)}",
    )

    samples = sorted(snap.recent_latencies)
    traffic = Table(title="traffic (simulated players)", title_justify="left", expand=True)
    traffic.add_column("figure")
    traffic.add_column("value", justify="right")
    traffic.add_row("players connected", str(snap.connected))
    traffic.add_row("frames sent", str(snap.sent))
    traffic.add_row("updates acked", str(snap.acked))
    traffic.add_row("acks/s", f"{snap.acks_per_s:.0f}")
    traffic.add_row(
        "ACK p50 / p99",
        f"{_ms(percentile(samples, 50))} / {_ms(percentile(samples, 99))}",
    )
    traffic.add_row("invalid, answered as documented", str(snap.expected_errors))
    traffic.add_row(
        "unexpected errors",
        Text(str(snap.unexpected_errors), style="bold red" if snap.unexpected_errors else "green"),
    )
    traffic.add_row(
        "disconnections",
        Text(str(snap.unexpected_closes), style="bold red" if snap.unexpected_closes else "green"),
    )
    traffic.add_row("reconnects (by choice)", str(snap.reconnects))

    comparisons = snap.compare.get("comparisons") or {}
    compared = Table(title="comparator", title_justify="left", expand=True)
    compared.add_column("kind")
    for result in ("match", "mismatch", "unpaired"):
        compared.add_column(result, justify="right")
    for kind in sorted(comparisons):
        counts = comparisons[kind] or {}
        compared.add_row(
            kind,
            str(counts.get("match", 0)),
            Text(str(counts.get("mismatch", 0)), style="red" if counts.get("mismatch") else ""),
            Text(str(counts.get("unpaired", 0)), style="yellow" if counts.get("unpaired") else ""),
        )
    ratio = snap.compare.get("mismatch_ratio")
    diverged = list(snap.compare.get("diverged") or [])
    compared.add_row("mismatch ratio", "-" if ratio is None else f"{ratio:.3%}", "", "")
    compared.add_row(
        "diverged games",
        Text(", ".join(diverged) or "none", style="bold red" if diverged else "green"),
        "",
        "",
    )
    compared.add_row(
        "findings / resyncs",
        f"{snap.compare.get('findings', 0)} / {snap.compare.get('resyncs', 0)}",
        "",
        "",
    )
    compared.add_row(
        "upstream p99",
        f"primary {_ms(snap.figures.get('primary_p99'))}",
        f"shadow {_ms(snap.figures.get('shadow_p99'))}",
        "",
    )

    parts: list[RenderableType] = [head]
    if width >= 110:
        body = Table.grid(expand=True, padding=(0, 1))
        body.add_column(ratio=1)
        body.add_column(ratio=1)
        body.add_row(traffic, compared)
        parts.append(body)
    else:
        parts += [traffic, compared]
    paths = snap.compare.get("top_paths") or []
    if paths:
        by_path = Table(title="mismatches by path", title_justify="left", expand=True)
        by_path.add_column("kind")
        by_path.add_column("path", overflow="fold")
        by_path.add_column("count", justify="right")
        for row in paths[:5]:
            by_path.add_row(str(row.get("kind")), str(row.get("path")), str(row.get("count")))
        parts.append(by_path)
    return Panel(Group(*parts), title="stateshift demo", title_align="left")


@dataclass
class Step:
    """One thing the demo set out to show, and whether it did."""

    name: str
    ok: bool
    detail: str
    note: str = ""


def summary_view(steps: Sequence[Step], figures: Mapping[str, str]) -> RenderableType:
    """The end: each step with its verdict, then the run's figures."""
    table = Table(title="demo summary", title_justify="left")
    table.add_column("step")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for step in steps:
        mark = Text("ok", style="bold green") if step.ok else Text("FAILED", style="bold red")
        detail = Text(step.detail)
        if step.note:
            detail.append(f"\nnote: {step.note}", style="yellow")
        table.add_row(step.name, mark, detail)
    numbers = Table.grid(padding=(0, 2))
    numbers.add_column(style="bold")
    numbers.add_column()
    for name, value in figures.items():
        numbers.add_row(name, value)
    return Group(table, numbers)
