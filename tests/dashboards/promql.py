"""What the dashboards and rules query: every PromQL expression with where it comes from,
the metric names in it, and the families the components export.

The names are parsed out of the PromQL with a small tokenizer: strings, label matchers,
ranges and `by (…)`-style label lists are removed, then every identifier that is not a
function (followed by `(`), a keyword or part of a number is a metric name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dashboards import build

KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan", "atan2"}
)
#: Grafana's variables, replaced by what "All" means to Prometheus
VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$proxy": ".+",
    "$server": ".+",
    "$legacy": ".+",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from."""

    where: str
    expr: str
    #: a panel target must return data; annotations and alerts may be empty
    must_return_data: bool

    def resolved(self) -> str:
        """The expression with Grafana's variables replaced."""
        out = self.expr
        for name, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
            out = out.replace(name, value)
        assert "$" not in out, f"{self.where}: unknown variable in {out!r}"
        return out


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names an expression reads."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        token = match.group(0)
        if token in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(token)
    return names


def dashboards() -> dict[str, dict[str, Any]]:
    """The committed dashboards' JSON, by file name."""
    return {
        path.name: json.loads(path.read_text()) for path in sorted(build.GRAFANA_DIR.glob("*.json"))
    }


def dashboard_queries() -> Iterator[Query]:
    """Every panel target, annotation and variable query of the committed dashboards."""
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                where = f"{name}: {panel['title']} ({target['refId']})"
                yield Query(where, target["expr"], must_return_data=True)
        for note in board["annotations"]["list"]:
            if "expr" in note:
                yield Query(f"{name}: annotation {note['name']}", note["expr"], False)
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
                assert match, f"{name}: variable {variable['name']}: {variable['definition']}"
                yield Query(f"{name}: variable {variable['name']}", match.group(1), True)


def rule_queries() -> Iterator[Query]:
    """Every recording rule's and alert's expression."""
    for record in build.RECORDS:
        yield Query(f"record {record.record}", record.expr, must_return_data=True)
    for alert in build.ALERTS:
        yield Query(f"alert {alert.alert}", alert.expr, must_return_data=False)


def all_queries() -> list[Query]:
    return [*dashboard_queries(), *rule_queries()]


def recorded() -> set[str]:
    return {record.record for record in build.RECORDS}


def exported_series(exposition: str) -> set[str]:
    """Series names a Prometheus text exposition declares (also families with no sample
    yet): counters as `_total`, histograms as `_bucket`, `_sum`, `_count`."""
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        name, kind = match.groups()
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def unknown_names(exported: set[str]) -> dict[str, set[str]]:
    """Queries (by where) reading a name that is neither exported nor recorded."""
    known = exported | recorded()
    out = {}
    for query in all_queries():
        missing = metric_names(query.expr) - known
        if missing:
            out[query.where] = missing
    return out
