"""The Prometheus alert rules (deploy/prometheus/alerts.yml) pass ``promtool check`` and their unit tests,
and every alert has a test where it fires and one where it does not."""

from __future__ import annotations

import subprocess

import yaml
from ops_support import ROOT, tool_or_skip

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"


def promtool(*args: str) -> str:
    """Run promtool (skip when it is not installed); return its output, failing on a non-zero status."""
    proc = subprocess.run(
        [tool_or_skip("promtool"), *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_and_example_config_are_valid():
    out = promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alert_names())} rules found" in out, out
    promtool("check", "config", str(PROMETHEUS / "prometheus.example.yml"))


def test_rule_unit_tests_pass():
    files = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert files
    out = promtool("test", "rules", *files)
    assert "SUCCESS" in out and "FAILED" not in out, out


def test_every_alert_is_tested_firing_and_not_firing():
    cases: dict[str, set[bool]] = {name: set() for name in alert_names()}
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    missing = {name: sorted({True, False} - seen) for name, seen in cases.items() if seen != {True, False}}
    assert missing == {}, f"alerts without a firing (True) or a quiet (False) test case: {missing}"
