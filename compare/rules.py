"""Ignore rules: what may legitimately differ between the primary and the shadow.

A rule that hides a real difference is as bad as noise, so rules are explicit, declarative
(TOML, `--rules PATH`) and listed by `stateshift compare rules`. Three kinds, each per
message type (`"*"` for every type):

- `ignore_keys`: field names ignored at any depth (the protocol's volatile fields);
- `exclude_paths`: exact DeepDiff paths (`root['state']['settings']['debug']`);
- `exclude_regex_paths`: DeepDiff path regexes, anchored with `$` when loaded.

A table names a type of frame the servers send (PROTOCOL.md; `server.rules.ANSWER_TYPES`)
or `"*"`. Any other name is refused: a misspelt `[rules.STAET]`, or a type clients send
(`[rules.STATE_UPDATE]`: its answers are `ACK` and `STATE`), would never match a compared
frame, and the difference it was meant to hide would still count.

The TOML file:

    [rules."*"]
    ignore_keys = ["updated_at", "server_time", "session_id"]

    [rules.ERROR]
    ignore_keys = ["message"]
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from server.rules import ANSWER_TYPES, MESSAGE_TYPES

#: shipped defaults: fields that differ between two correct servers by nature
DEFAULT_RULES: dict[str, dict[str, list[str]]] = {
    "*": {"ignore_keys": ["updated_at", "server_time", "session_id"]},
    # Error texts are for people; the code (and re, version) are the contract.
    "ERROR": {"ignore_keys": ["message"]},
}
KINDS = ("ignore_keys", "exclude_paths", "exclude_regex_paths")
#: what a `[rules.TYPE]` table may name: a type of frame the servers send (the comparator
#: compares only those), or `*` for all
KNOWN_TYPES: Final = ("*", *sorted(ANSWER_TYPES))


class RulesError(ValueError):
    """The rules file is not valid."""


@dataclass(frozen=True, slots=True)
class TypeRules:
    """The rules in force for one message type (the type's own plus the `*` ones)."""

    ignore_keys: frozenset[str] = frozenset()
    exclude_paths: tuple[str, ...] = ()
    exclude_regex_paths: tuple[str, ...] = ()

    def deepdiff_kwargs(self) -> dict[str, Any]:
        """Exclusions for DeepDiff: ignored keys become regexes anchored with `$`."""
        regexes = [rf"\['{re.escape(key)}'\]$" for key in sorted(self.ignore_keys)]
        regexes.extend(self.exclude_regex_paths)
        kwargs: dict[str, Any] = {}
        if regexes:
            kwargs["exclude_regex_paths"] = regexes
        if self.exclude_paths:
            kwargs["exclude_paths"] = list(self.exclude_paths)
        return kwargs


@dataclass(frozen=True, slots=True)
class Rules:
    """Ignore rules by message type."""

    by_type: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    source: str = "defaults"
    #: merged rules per message type (computed once: this is on every comparison's path)
    _merged: dict[str | None, TypeRules] = field(default_factory=dict, compare=False, repr=False)

    def for_type(self, message_type: str | None) -> TypeRules:
        """The rules applying to frames of `message_type`."""
        cached = self._merged.get(message_type)
        if cached is None:
            cached = self._merged[message_type] = self._merge(message_type)
        return cached

    def _merge(self, message_type: str | None) -> TypeRules:
        merged: dict[str, list[str]] = {kind: [] for kind in KINDS}
        for key in ("*", message_type):
            if key is None:
                continue
            for kind, values in self.by_type.get(key, {}).items():
                merged[kind].extend(values)
        return TypeRules(
            frozenset(merged["ignore_keys"]),
            tuple(merged["exclude_paths"]),
            tuple(merged["exclude_regex_paths"]),
        )

    def listing(self) -> list[dict[str, str]]:
        """Every rule as a row: message type, kind, value (for `compare rules`)."""
        return [
            {"type": message_type, "kind": kind, "value": value}
            for message_type, kinds in sorted(self.by_type.items())
            for kind, values in sorted(kinds.items())
            for value in values
        ]


def _anchor(regex: str) -> str:
    return regex if regex.endswith("$") else regex + "$"


def build(data: dict[str, Any], source: str) -> Rules:
    """Rules from a parsed `{type: {kind: [values]}}` mapping, validated."""
    by_type: dict[str, dict[str, tuple[str, ...]]] = {}
    for message_type, kinds in data.items():
        if message_type not in KNOWN_TYPES:
            what = (
                "a type clients send; rules apply to what the servers send"
                if message_type in MESSAGE_TYPES
                else "unknown message type"
            )
            raise RulesError(
                f"rules.{message_type}: {what} {message_type!r} (known: {', '.join(KNOWN_TYPES)})"
            )
        if not isinstance(kinds, dict):
            raise RulesError(f"rules.{message_type} must be a table")
        entry: dict[str, tuple[str, ...]] = {}
        for kind, values in kinds.items():
            if kind not in KINDS:
                raise RulesError(f"rules.{message_type}: unknown kind {kind!r} (one of {KINDS})")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise RulesError(f"rules.{message_type}.{kind} must be a list of strings")
            if kind == "exclude_regex_paths":
                values = [_anchor(v) for v in values]
                for regex in values:
                    try:
                        re.compile(regex)
                    except re.error as exc:
                        raise RulesError(f"rules.{message_type}: bad regex {regex!r}") from exc
            entry[kind] = tuple(values)
        by_type[str(message_type)] = entry
    return Rules(by_type, source)


def defaults() -> Rules:
    """The shipped rules."""
    return build(DEFAULT_RULES, "defaults")


def load(path: Path | None) -> Rules:
    """Rules from a TOML file (its `[rules.TYPE]` tables replace the defaults), or the
    defaults when `path` is None."""
    if path is None:
        return defaults()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"cannot read rules from {path}: {exc}") from exc
    rules = data.get("rules")
    if not isinstance(rules, dict):
        raise RulesError(f"{path} has no [rules.TYPE] tables")
    return build(rules, str(path))
