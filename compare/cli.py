"""`stateshift compare …` and `stateshift backfill`: the comparator's command line.

`compare rules` lists the ignore rules in force; `compare status`, `show` and `explain` ask a
running proxy's control plane (`COMPARE_STATUS`, `FINDINGS`, `FINDING`); `compare sweep`
compares every game of two servers directly through their admin paths; `backfill` copies
every game from one server to the other before a parallel run.

Output: rich tables for people, rendered on a `Console` passed in (tests render into
`io.StringIO()`); `--json` prints one JSON document for scripts. Exit codes: 0 ok,
1 findings or failures, 2 usage or connection errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from compare import rules as rules_module
from compare.admin import AdminClient, AdminError
from compare.backfill import (
    BackfillReport,
    Checkpoint,
    CheckpointError,
    GameResult,
)
from compare.backfill import backfill as run_backfill
from compare.diffing import normalise_path
from compare.rules import Rules, RulesError
from compare.sweep import SweepReport, sweep
from stateshift.control import ADMIN_TOKEN_ENV, ControlClient, ControlError, ws_url_problem
from stateshift.options import positive_seconds
from stateshift.tokens import SECRET_ENV, mint_token

app = typer.Typer(
    help="The state comparator: ignore rules, live findings, snapshot sweeps.",
    no_args_is_help=True,
)

# Tests may replace these; every renderer also takes a console argument (STYLE.md).
console = Console()
err_console = Console(stderr=True)

#: how many ids a list in a panel shows before "… N more"
SHOWN_IDS: Final = 20
EXIT_CODES: Final = "Exit codes: 0 ok, 1 {one}, 2 usage or connection errors."


def one_proxy(proxies: list[str]) -> list[str]:
    """`--proxy` given once: these commands read one proxy (a repeated `--proxy` kept only
    the last, silently: an operator asking a fleet saw one proxy's figures as the fleet's)."""
    if len(proxies) != 1:
        raise typer.BadParameter(
            "give exactly one (these commands read one proxy: run them once per proxy)"
        )
    return proxies


ProxyOption = Annotated[
    list[str],
    typer.Option(
        "--proxy",
        callback=one_proxy,
        help="The proxy's control address, e.g. ws://127.0.0.1:8081 (one).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str,
    typer.Option(
        envvar=ADMIN_TOKEN_ENV,
        show_default=False,
        help=f"Admin JWT for the control plane (use the env var {ADMIN_TOKEN_ENV}).",
    ),
]
SecretOption = Annotated[
    str,
    typer.Option(
        envvar=SECRET_ENV,
        show_default=False,
        help=f"The servers' shared secret, to mint an admin token (use {SECRET_ENV}).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
TimeoutOption = Annotated[
    float, typer.Option(callback=positive_seconds, help="Seconds to wait for each answer.")
]
RulesOption = Annotated[
    Path | None, typer.Option("--rules", help="TOML rules file (default: the shipped rules).")
]


T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error on stderr and exit."""
    # the message is text, not markup: `[rules.STATE]` in it must be shown as written
    # one line however long (a wrapped line reads as two errors): soft_wrap
    err_console.print(
        f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True
    )
    raise typer.Exit(code=code)


def print_json(data: Any) -> None:
    """One JSON document on stdout (plain text: never wrapped or coloured)."""
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def load_rules(path: Path | None) -> Rules:
    """The rules, or exit 2 saying what is wrong with the file."""
    try:
        return rules_module.load(path)
    except RulesError as exc:
        fail(str(exc))


def ws_url(url: str, option: str) -> str:
    """A ws:// URL, or exit 2 saying what is wrong with it."""
    problem = ws_url_problem(url)
    if problem is not None:
        fail(f"{option} is not a valid ws:// URL: {problem} ({url!r})")
    return url


async def control_request(
    proxy: str, token: str, command: str, answer_within: float, **fields: Any
) -> dict[str, Any]:
    """One control command's answer."""
    async with ControlClient(proxy, token, timeout=answer_within) as client:
        return await client.request(command, **fields)


def ask_proxy(proxy: str, token: str, command: str, timeout: float, **fields: Any) -> Any:
    """Run one control command; exit 2 on any error (unreachable, refused, bad answer)."""
    ws_url(proxy, "--proxy")
    if not token:
        fail(
            f"{ADMIN_TOKEN_ENV} is not set: an admin token for the proxy's control plane, "
            f"e.g. `export {ADMIN_TOKEN_ENV}=$(stateshift token --sub $USER --role admin)`"
        )
    try:
        return asyncio.run(control_request(proxy, token, command, timeout, **fields))
    except ControlError as exc:
        fail(f"{command} on {proxy}: {exc.code}: {exc.message}")


def ask_proxy_for(
    key: str, kind: type[T], proxy: str, token: str, command: str, timeout: float, **fields: Any
) -> T:
    """Run one control command; the answer's `key` (a `kind`), or exit 2 when it has none."""
    return answer_field(
        ask_proxy(proxy, token, command, timeout, **fields), key, kind, command, proxy
    )


def answer_field(answer: Mapping[str, Any], key: str, kind: type[T], command: str, proxy: str) -> T:
    """An answer's `key` (a `kind`; a bool is no number), or exit 2: a peer answering with
    another shape (another version, not a proxy) is not believed."""
    value = answer.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        fail(
            f"{command} on {proxy}: BAD_ANSWER: the answer has no `{key}` "
            f"({kind.__name__}), got {value!r:.80}"
        )
    return value


def compare_status_problem(figures: Mapping[str, Any]) -> str | None:
    """What is wrong with the shape of a `COMPARE_STATUS` answer's figures, or None: the
    fields `compare status` draws and decides its exit code on."""
    comparisons = figures.get("comparisons")
    if not isinstance(comparisons, dict) or not all(
        isinstance(results, dict) for results in comparisons.values()
    ):
        return f"`comparisons` is {comparisons!r:.80}, not counts by kind and result"
    if not isinstance(figures.get("diverged"), list):
        return f"`diverged` is {figures.get('diverged')!r:.80}, not a list of games"
    for key in ("not_comparable", "top_paths"):
        if figures.get(key) is not None and not isinstance(figures[key], list):
            return f"`{key}` is {figures[key]!r:.80}, not a list"
    for key in ("mismatch_ratio", "lag_seconds"):
        if figures.get(key) is not None and _number(figures[key]) is None:
            return f"`{key}` is {figures[key]!r:.80}, not a number"
    return None


def admin_token(secret: str, sub: str) -> str:
    """A short-lived admin token for the servers' admin paths, or exit 2."""
    if not secret:
        fail(f"{SECRET_ENV} is not set (the secret shared by both servers)")
    return mint_token(secret, sub, "admin", ["*"], ttl=6 * 3600)


# ----------------------------------------------------------------- rendering


def when(at: Any) -> str:
    """A finding's time (epoch seconds or text) for people, in UTC like the servers'."""
    if isinstance(at, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
    return str(at) if at is not None else "-"


def id_list(ids: Sequence[Any]) -> str:
    """Some ids, then how many more."""
    shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    more = len(ids) - SHOWN_IDS
    return shown + (f" … {more} more" if more > 0 else "") if ids else "none"


def render_rules(rules: Rules, out: Console) -> None:
    """The rules in force as a table."""
    table = Table(title=f"Ignore rules ({rules.source})", title_justify="left")
    table.add_column("type")
    table.add_column("kind")
    table.add_column("value", overflow="fold")
    for row in rules.listing():
        table.add_row(Text(row["type"]), Text(row["kind"]), Text(row["value"]))
    out.print(table)
    if not rules.listing():
        out.print("[yellow]no rules: every difference counts[/yellow]")


def render_status(status: Mapping[str, Any], out: Console) -> None:
    """`COMPARE_STATUS` as panels: counts by kind and result, ratios, top paths, games."""
    comparisons = _mapping(status.get("comparisons"))
    counts = Table(title="Comparisons", title_justify="left")
    results = ("match", "mismatch", "unpaired")
    counts.add_column("kind")
    for result in results:
        counts.add_column(result, justify="right")
    for kind in sorted(comparisons):
        by_result = _mapping(comparisons[kind])
        counts.add_row(kind, *(str(by_result.get(result, 0)) for result in results))
    ratio = _number(status.get("mismatch_ratio"))
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("mismatch ratio", "-" if ratio is None else f"{ratio:.4%}")
    summary.add_row("findings", str(status.get("findings", 0)))
    summary.add_row("resyncs", str(status.get("resyncs", 0)))
    lag = _number(status.get("lag_seconds"))
    summary.add_row("lag", "-" if lag is None else f"{lag:.3f} s")
    diverged = _list(status.get("diverged"))
    not_comparable = _list(status.get("not_comparable"))
    summary.add_row("diverged", Text(id_list(diverged), style="bold red" if diverged else "green"))
    summary.add_row(
        "not comparable",
        Text(id_list(not_comparable), style="yellow" if not_comparable else "green"),
    )
    paths = Table(title="Top differing paths", title_justify="left")
    paths.add_column("kind")
    paths.add_column("path", overflow="fold")
    paths.add_column("count", justify="right")
    for row in _list(status.get("top_paths")):
        row = _mapping(row)
        paths.add_row(str(row.get("kind")), str(row.get("path")), str(row.get("count")))
    parts: list[RenderableType] = [summary, counts]
    if paths.row_count:
        parts.append(paths)
    out.print(Panel(Group(*parts), title="comparator", title_align="left"))


def render_findings(findings: Sequence[Mapping[str, Any]], out: Console) -> None:
    """`FINDINGS` as a table, newest first as the proxy sent them."""
    if not findings:
        out.print("[green]no findings[/green]")
        return
    table = Table(title="Findings", title_justify="left")
    for column in ("id", "at", "kind", "result", "game", "versions p/s", "paths"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        finding = _mapping(finding)
        versions = _mapping(finding.get("versions"))
        marks = " (first)" if finding.get("first") else ""
        missing = finding.get("missing")
        result = str(finding.get("result")) + (f", {missing} missing" if missing else "")
        table.add_row(
            str(finding.get("id")),
            when(finding.get("at")),
            str(finding.get("kind")),
            Text(result, style="red" if finding.get("result") == "mismatch" else "yellow"),
            f"{finding.get('game_id')}{marks}",
            f"{_v(versions.get('primary'))}/{_v(versions.get('shadow'))}",
            "\n".join(str(p) for p in _list(finding.get("paths"))),
        )
    out.print(table)


def _mapping(value: Any) -> Mapping[str, Any]:
    """A part of an answer that should be an object; empty when the peer sent another shape."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    """A part of an answer that should be a list; empty when the peer sent another shape."""
    return list(value) if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    """A figure of an answer, or None when the peer sent none (or not a number)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _v(version: Any) -> str:
    return "-" if version is None else str(version)


def diff_paths(diff: Any) -> set[str]:
    """The raw paths a DeepDiff JSON result names (its report keys or list items)."""
    paths: set[str] = set()
    if isinstance(diff, Mapping):
        for report in diff.values():
            if isinstance(report, Mapping):
                paths.update(str(key) for key in report)
            elif isinstance(report, list):
                paths.update(item for item in report if isinstance(item, str))
    return paths


def json_lines(value: Any, path: str = "root") -> Iterator[tuple[str, str]]:
    """Pretty JSON lines of `value`, each with the DeepDiff path of what it shows."""
    yield from _json_lines(value, path, 0, "", "")


def _json_lines(
    value: Any, path: str, depth: int, lead: str, trail: str
) -> Iterator[tuple[str, str]]:
    pad = "  " * depth
    if isinstance(value, dict) and value:
        yield f"{pad}{lead}{{", path
        last = len(value) - 1
        for n, (key, item) in enumerate(value.items()):
            child = f"{path}[{key!r}]"
            yield from _json_lines(
                item, child, depth + 1, f"{json.dumps(key)}: ", "," if n < last else ""
            )
        yield f"{pad}}}{trail}", path
    elif isinstance(value, list) and value:
        yield f"{pad}{lead}[", path
        for n, item in enumerate(value):
            yield from _json_lines(
                item, f"{path}[{n}]", depth + 1, "", "," if n < len(value) - 1 else ""
            )
        yield f"{pad}]{trail}", path
    else:
        yield f"{pad}{lead}{json.dumps(value)}{trail}", path


def highlighted(document: Any, raw: set[str], normalised: set[str], style: str) -> Text:
    """`document` as pretty JSON with the lines at (or under) a differing path in `style`."""
    if document is None:
        return Text("(nothing)", style="dim italic")
    text = Text()
    for line, path in json_lines(document):
        differs = (
            path in raw
            or any(path.startswith(p + "[") for p in raw)
            or (not raw and normalise_path(path) in normalised)
        )
        text.append(line + "\n", style=style if differs else "")
    text.rstrip()
    return text


def render_finding(finding: Mapping[str, Any], out: Console) -> None:
    """`FINDING`: the two documents side by side, differing lines highlighted, then the diff."""
    versions = _mapping(finding.get("versions"))
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("finding", str(finding.get("id")))
    head.add_row("at", when(finding.get("at")))
    head.add_row("kind", f"{finding.get('kind')} ({finding.get('result')})")
    head.add_row("game", str(finding.get("game_id")) + (" (first)" if finding.get("first") else ""))
    head.add_row(
        "versions", f"primary {_v(versions.get('primary'))}, shadow {_v(versions.get('shadow'))}"
    )
    if finding.get("missing"):
        head.add_row("missing", Text(f"on the {finding['missing']}", style="bold red"))
    paths = [str(p) for p in _list(finding.get("paths"))]
    head.add_row("paths", "\n".join(paths) or "-")
    out.print(head)
    raw, normalised = diff_paths(finding.get("diff")), set(paths)
    sides = Table(expand=True, show_lines=False)
    sides.add_column("primary", ratio=1, overflow="fold")
    sides.add_column("shadow", ratio=1, overflow="fold")
    sides.add_row(
        highlighted(finding.get("primary"), raw, normalised, "bold red"),
        highlighted(finding.get("shadow"), raw, normalised, "bold green"),
    )
    out.print(sides)
    text = str(finding.get("text") or "").strip()
    if text:
        out.print(Panel(Text(text), title="diff", title_align="left"))


def render_sweep(report: SweepReport, roles: Mapping[str, str], out: Console) -> None:
    """A sweep's counts, findings and skipped games."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("primary / shadow", f"{roles['primary']} / {roles['shadow']}")
    summary.add_row("games", str(report.games))
    summary.add_row("compared", str(report.compared))
    summary.add_row("matched", str(report.matched))
    summary.add_row(
        "findings",
        Text(str(len(report.findings)), style="bold red" if report.findings else "green"),
    )
    summary.add_row("skipped", str(len(report.skipped)))
    out.print(Panel(summary, title="snapshot sweep", title_align="left"))
    if report.findings:
        table = Table(title="Findings", title_justify="left")
        for column in ("game", "versions p/s", "missing", "paths"):
            table.add_column(column, overflow="fold")
        for finding in report.findings:
            table.add_row(
                finding.game_id,
                f"{_v(finding.primary_version)}/{_v(finding.shadow_version)}",
                roles[finding.missing] if finding.missing else "-",
                "\n".join(finding.verdict.paths),
            )
        out.print(table)
        out.print("[dim]--json shows each finding's two states and diff[/dim]")
    if report.skipped:
        table = Table(title="Skipped", title_justify="left")
        table.add_column("game")
        table.add_column("reason", overflow="fold")
        for game_id, reason in report.skipped:
            table.add_row(game_id, Text(reason))
        out.print(table)


def render_backfill(report: BackfillReport, out: Console) -> None:
    """A backfill's summary and failures."""
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    if report.resumed_after is not None:
        summary.add_row("resumed after", report.resumed_after)
    summary.add_row("games", str(report.games))
    summary.add_row("would copy" if report.dry_run else "copied", str(report.copied))
    summary.add_row("already equal", str(report.equal))
    summary.add_row(
        "failed", Text(str(report.failed), style="bold red" if report.failed else "green")
    )
    if report.newer:
        summary.add_row(
            "newer on target",
            Text(f"{report.newer} (counted as failed; not overwritten)", style="bold red"),
        )
    if report.checkpoint is not None and not report.dry_run:
        summary.add_row("checkpoint", report.checkpoint)
    if report.stopped_early:
        summary.add_row("stopped", "at --limit: more games follow (rerun to continue)")
    title = "backfill (dry run)" if report.dry_run else "backfill"
    out.print(Panel(summary, title=title, title_align="left"))
    if report.failures:
        table = Table(title="Failed games", title_justify="left")
        table.add_column("game")
        table.add_column("error", overflow="fold")
        for failure in report.failures[:SHOWN_IDS]:
            table.add_row(failure.game_id, Text(failure.detail))
        if report.failed > SHOWN_IDS:
            table.add_row("…", f"{report.failed - SHOWN_IDS} more (--json lists all)")
        out.print(table)


# ----------------------------------------------------------------- commands


@app.command("rules")
def rules_command(rules: RulesOption = None, as_json: JsonOption = False) -> None:
    """List the ignore rules in force: type, kind, value, and where they come from.

    Exit codes: 0 ok, 2 the rules file is not valid.
    """
    loaded = load_rules(rules)
    if as_json:
        print_json({"source": loaded.source, "rules": loaded.listing()})
    else:
        render_rules(loaded, console)


@app.command()
def status(
    proxies: ProxyOption,
    token: TokenOption = "",
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """The live comparator's figures (control command COMPARE_STATUS).

    Exit codes: 0 ok, 1 some game is currently diverged, 2 usage or connection errors.
    """
    proxy = proxies[0]
    figures = ask_proxy_for("compare", dict, proxy, token, "COMPARE_STATUS", timeout)
    problem = compare_status_problem(figures)
    if problem is not None:
        fail(f"COMPARE_STATUS on {proxy}: BAD_ANSWER: {problem}")
    if as_json:
        print_json(figures)
    else:
        render_status(figures, console)
    raise typer.Exit(code=1 if figures.get("diverged") else 0)


@app.command()
def show(
    proxies: ProxyOption,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Newest findings to show.")] = 20,
    token: TokenOption = "",
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """The newest findings kept by the comparator (control command FINDINGS).

    Exit codes: 0 ok (with or without findings), 2 usage or connection errors.
    """
    proxy = proxies[0]
    findings = ask_proxy_for("findings", list, proxy, token, "FINDINGS", timeout, limit=limit)
    if not all(isinstance(finding, dict) for finding in findings):
        fail(f"FINDINGS on {proxy}: BAD_ANSWER: `findings` is not a list of objects")
    if as_json:
        print_json(findings)
    else:
        render_findings(findings, console)


@app.command()
def resync(
    game_id: Annotated[str, typer.Argument(help="The game whose shadow copy is replaced.")],
    proxies: ProxyOption,
    token: TokenOption = "",
    as_json: JsonOption = False,
    timeout: TimeoutOption = 30.0,
) -> None:
    """Replace the shadow's copy of one game with the primary's, now (control command
    RESYNC): the game becomes comparable again. Safe under traffic: the proxy holds the
    game's mirrored frames while it copies.

    Exit codes: 0 resynced, 2 usage or connection errors (or the game does not exist).
    """
    proxy = proxies[0]
    answer = ask_proxy(proxy, token, "RESYNC", timeout, game_id=game_id)
    resynced = answer_field(answer, "game_id", str, "RESYNC", proxy)
    version = answer_field(answer, "version", int, "RESYNC", proxy)
    if as_json:
        print_json(answer)
    else:
        console.print(
            f"[green]resynced[/green] {escape(resynced)}: the shadow now has version {version}"
        )


@app.command()
def explain(
    finding_id: Annotated[
        int,
        typer.Argument(metavar="ID", min=1, max=2**63 - 1, help="A finding's id (see `show`)."),
    ],
    proxies: ProxyOption,
    token: TokenOption = "",
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """One finding in full: both frames side by side, then the diff.

    Differing lines are highlighted (control command FINDING).

    Exit codes: 0 ok, 2 usage or connection errors, or no such finding (kept ones only).
    """
    proxy = proxies[0]
    finding = ask_proxy_for(
        "finding", dict, proxy, token, "FINDING", timeout, finding_id=finding_id
    )
    if as_json:
        print_json(finding)
    else:
        render_finding(finding, console)


async def _sweep(
    urls: Mapping[str, str], token: str, rules: Rules, answer_within: float
) -> SweepReport:
    async with (
        AdminClient(urls["primary"], token, timeout=answer_within) as primary,
        AdminClient(urls["shadow"], token, timeout=answer_within) as shadow,
    ):
        return await sweep(primary, shadow, rules)


@app.command("sweep")
def sweep_command(
    old: Annotated[str, typer.Option(help="The old server, e.g. ws://10.0.0.5:8765.")],
    new: Annotated[str, typer.Option(help="The new server.")],
    primary: Annotated[str, typer.Option(help="Which server is primary: old | new.")] = "old",
    rules: RulesOption = None,
    secret: SecretOption = "",
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Compare every game's state on both servers now, at equal versions.

    Reads through both servers' admin paths; games whose versions keep moving are skipped
    as "version skew", games on one side only are findings.

    Exit codes: 0 no finding, 1 findings, 2 usage or connection errors.
    """
    if primary not in ("old", "new"):
        fail("--primary must be old or new")
    servers = {"old": ws_url(old, "--old"), "new": ws_url(new, "--new")}
    shadow = "new" if primary == "old" else "old"
    loaded = load_rules(rules)
    token = admin_token(secret, "stateshift-compare-sweep")
    urls = {"primary": servers[primary], "shadow": servers[shadow]}
    try:
        report = asyncio.run(_sweep(urls, token, loaded, timeout))
    except AdminError as exc:
        fail(f"sweep: {exc.code}: {exc.message}")
    roles = {"primary": primary, "shadow": shadow}
    if as_json:
        print_json({"primary": primary, "shadow": shadow, **report.to_json()})
    else:
        render_sweep(report, roles, console)
    raise typer.Exit(code=0 if report.ok else 1)


async def _backfill(
    source: str,
    target: str,
    token: str,
    checkpoint: Checkpoint | None,
    *,
    dry_run: bool,
    verify: bool,
    overwrite_newer: bool,
    limit: int | None,
    answer_within: float,
    progress: Progress,
) -> BackfillReport:
    task = progress.add_task("listing", total=None)
    listed = 0
    counts = {"copied": 0, "equal": 0, "newer": 0, "failed": 0}

    def on_listed(count: int, last: bool) -> None:
        nonlocal listed
        listed += count
        progress.update(task, total=listed if last or listed else None)

    def on_result(result: GameResult) -> None:
        counts[result.result] += 1
        if not result.ok:
            progress.console.print(
                f"[red]failed[/red] {result.game_id}: {escape(result.detail)}", highlight=False
            )
        copied = "would copy" if dry_run else "copied"
        progress.update(
            task,
            advance=1,
            description=(
                f"{copied} {counts['copied']} · equal {counts['equal']}"
                f" · failed {counts['failed'] + counts['newer']}"
            ),
        )

    async with (
        AdminClient(source, token, timeout=answer_within) as source_client,
        AdminClient(target, token, timeout=answer_within) as target_client,
    ):
        return await run_backfill(
            source_client,
            target_client,
            checkpoint=checkpoint,
            dry_run=dry_run,
            verify=verify,
            overwrite_newer=overwrite_newer,
            limit=limit,
            on_result=on_result,
            on_listed=on_listed,
        )


def backfill(
    source: Annotated[
        str, typer.Option("--from", help="The server to copy from (the primary), ws://H:P.")
    ],
    target: Annotated[str, typer.Option("--to", help="The server to copy to, ws://H:P.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="File recording progress: a rerun continues after it."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compare and count, import nothing.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many games (a batch).")
    ] = None,
    verify: Annotated[
        bool, typer.Option(help="Read each imported state back and check it is exact.")
    ] = True,
    overwrite_newer: Annotated[
        bool,
        typer.Option(
            "--overwrite-newer",
            help="Also import over a target whose version is higher than the source's"
            " (its newer updates are lost).",
        ),
    ] = False,
    secret: SecretOption = "",
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Copy every game from one server to another before a parallel run.

    Through both servers' admin paths (GET_STATE, IMPORT_STATE).

    Idempotent: a game whose target state already equals the source's exactly is left
    alone, and a target whose version is higher than the source's is never overwritten
    (reported as failed, "newer on target: not overwritten"; --overwrite-newer imports it
    anyway), so a rerun is safe. Resumable: with --checkpoint a rerun retries the games
    that failed, then continues after the last game handled; once a run went through every
    game, the next one starts again from the first. A game's error is reported and counted,
    never fatal; a checkpoint that cannot be written stops the run before it copies.

    Exit codes: 0 nothing failed, 1 some games failed, 2 usage or connection errors.
    """
    source, target = ws_url(source, "--from"), ws_url(target, "--to")
    token = admin_token(secret, "stateshift-backfill")
    mark = Checkpoint(checkpoint, source, target) if checkpoint is not None else None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    try:
        with progress:
            report = asyncio.run(
                _backfill(
                    source,
                    target,
                    token,
                    mark,
                    dry_run=dry_run,
                    verify=verify,
                    overwrite_newer=overwrite_newer,
                    limit=limit,
                    answer_within=timeout,
                    progress=progress,
                )
            )
    except CheckpointError as exc:
        fail(str(exc))
    except AdminError as exc:
        fail(f"backfill stopped: {exc.code}: {exc.message} (the checkpoint, if any, is saved)")
    if as_json:
        print_json(report.to_json())
    else:
        render_backfill(report, console)
    raise typer.Exit(code=0 if report.ok else 1)
