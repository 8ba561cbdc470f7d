"""The runbooks: one per situation, each with the sections on-call relies on, and every
`stateshift …` command in their code blocks exists and takes the options it is given (checked
against the command's own `--help`)."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, cli_env, timeout

RUNBOOKS = ROOT / "runbooks"
SITUATIONS = (
    "starting-a-parallel-run.md",
    "investigating-a-mismatch.md",
    "diverged-game.md",
    "shadow-down-or-dropping.md",
    "running-the-switchover.md",
    "rollback.md",
    "finalizing-and-decommissioning.md",
    "proxy-restart-or-overload.md",
)
SECTIONS = ("symptoms", "first checks", "decision", "actions", "confirm", "undo")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: shell punctuation that ends a command
ENDS = frozenset({"|", "||", "&", "&&", ";", ")", "(", ">", ">>", "<", "$("})


@dataclass(frozen=True)
class Command:
    where: str
    path: tuple[str, ...]
    options: tuple[str, ...]


def code_lines(markdown: str) -> list[str]:
    """Shell lines of the fenced code blocks, continuation lines joined."""
    lines = []
    for block in FENCE.findall(markdown):
        lines.extend(block.replace("\\\n", " ").splitlines())
    return lines


@functools.cache
def help_text(path: tuple[str, ...]) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "stateshift", *path, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=cli_env(COLUMNS="250", TERM="dumb", NO_COLOR="1"),
        timeout=timeout(30),
    )
    return result.returncode, result.stdout + result.stderr


def is_group(path: tuple[str, ...]) -> bool:
    code, text = help_text(path)
    return code == 0 and "COMMAND [ARGS]" in text


def commands(path: Path) -> list[Command]:
    """Every `stateshift …` invocation in a runbook's code blocks."""
    found = []
    for line in code_lines(path.read_text()):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for start, token in enumerate(tokens):
            if token != "stateshift":
                continue
            words = []
            for word in tokens[start + 1 :]:
                if word in ENDS:
                    break
                words.append(word)
            command: list[str] = []
            while words and not words[0].startswith("-") and is_group(tuple(command)):
                command.append(words.pop(0))
            options = tuple(w.split("=", 1)[0] for w in words if w.startswith("--"))
            found.append(Command(f"{path.name}: {line.strip()}", tuple(command), options))
    return found


def all_commands() -> list[Command]:
    return [c for path in sorted(RUNBOOKS.glob("*.md")) for c in commands(path)]


def prefetch() -> None:
    """Run the `--help`s the runbooks may need at once (each is a Python start-up)."""
    paths: set[tuple[str, ...]] = {()}
    for path in RUNBOOKS.glob("*.md"):
        for line in code_lines(path.read_text()):
            words = re.findall(r"stateshift((?: [a-z][\w-]*){1,2})", line)
            for found in words:
                parts = tuple(found.split())
                paths.update(parts[:n] for n in range(1, len(parts) + 1))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(help_text, sorted(paths)))


@pytest.fixture(scope="module", autouse=True)
def _helps() -> None:
    prefetch()


@pytest.mark.parametrize("name", SITUATIONS)
def test_runbook_has_every_section(name: str):
    text = (RUNBOOKS / name).read_text()
    headings = [h.strip().lower() for h in re.findall(r"^## (.+)$", text, re.MULTILINE)]
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headings), f"{name}: no '## {section}'"
    assert commands(RUNBOOKS / name), f"{name}: no stateshift command"


def test_every_runbook_is_listed_in_the_index():
    index = (RUNBOOKS / "README.md").read_text()
    for path in RUNBOOKS.glob("*.md"):
        if path.name != "README.md":
            assert f"]({path.name})" in index, path.name


def test_every_stateshift_command_in_the_runbooks_exists_with_its_options():
    problems = []
    checked = all_commands()
    assert len(checked) > 30
    for command in checked:
        code, text = help_text(command.path)
        if code != 0 or not command.path or is_group(command.path):
            problems.append(f"{command.where}: not a command ({' '.join(command.path)})")
            continue
        for option in command.options:
            if not re.search(rf"{re.escape(option)}(?![\w-])", text):
                problems.append(f"{command.where}: {option} is not an option")
    assert problems == []


def test_the_checker_catches_an_unknown_option_and_command(tmp_path: Path):
    bad = tmp_path / "bad.md"
    bad.write_text(
        "```sh\nstateshift switchover flip --proxy ws://P:8081 --yolo\n"
        "stateshift compare teleport --proxy ws://P:8081\n```\n"
    )
    flip, teleport = commands(bad)
    assert flip.path == ("switchover", "flip")
    assert "--yolo" in flip.options
    code, text = help_text(flip.path)
    assert code == 0
    assert "--yolo" not in text
    assert help_text(teleport.path)[0] != 0
