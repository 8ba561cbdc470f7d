"""The rule file under promtool: it loads, and its unit tests (`dashboards/tests/`) pass, with
at least one case where each alert fires and one where it stays quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from dashboards import build
from tests.support import timeout

TESTS = sorted((build.HERE / "tests").glob("*.yml"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian package prometheus; scripts/test.sh)"
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=timeout(60)
    )


def test_rule_file_passes_promtool_check_rules():
    result = promtool("check", "rules", build.RULES_PATH)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(build.RECORDS) + len(build.ALERTS)} rules found" in result.stdout


def test_alert_unit_tests_pass():
    assert TESTS
    result = promtool("test", "rules", *TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet():
    fires: set[str] = set()
    quiet: set[str] = set()
    case = re.compile(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?")
    for path in TESTS:
        for name, empty in case.findall(path.read_text()):
            (quiet if empty else fires).add(name)
    names = {alert.alert for alert in build.ALERTS}
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (fires | quiet) - names == set(), "tests of alerts that do not exist"
