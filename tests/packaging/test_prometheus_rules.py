"""The Prometheus alerting rules in packaging/prometheus/: the file is what cloud/alert_rules.py
renders (the thresholds live in one place and cannot drift), promtool accepts it, and its unit
tests (alerts that fire, resolve, and stay silent) pass. promtool comes with Debian's
``prometheus`` package, installed by packaging/setup-dev.sh: a machine without it fails here,
as CI must run these."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cloud.alert_rules import DEFAULT_RULES, rules_file, rules_yaml

RULES = Path(__file__).parents[2] / "packaging" / "prometheus"
RULES_FILE = RULES / "vpp-alerts.rules.yml"


def promtool() -> str:
    path = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin:/usr/sbin")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package (packaging/setup-dev.sh "
            "does: apt-get install --no-install-recommends prometheus)"
        )
    return path


def test_the_rules_file_is_generated_from_the_engines_rules() -> None:
    assert RULES_FILE.read_text() == rules_yaml(), (
        "packaging/prometheus/vpp-alerts.rules.yml differs from cloud/alert_rules.py: "
        "regenerate it with python -m cloud.alert_rules > packaging/prometheus/vpp-alerts.rules.yml"
    )


@pytest.mark.parametrize(
    ("name", "field", "expected"),
    [(r.name, "for", r.for_s) for r in DEFAULT_RULES]
    + [(r.name, "keep_firing_for", r.keep_firing_for_s) for r in DEFAULT_RULES],
)
def test_each_rule_keeps_its_durations(name: str, field: str, expected: float) -> None:
    (entry,) = [e for e in rules_file()["groups"][0]["rules"] if e["alert"] == name]
    assert float(entry.get(field, "0s").removesuffix("s")) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["check", "rules", "vpp-alerts.rules.yml"], "SUCCESS: 9 rules found"),
        (["test", "rules", "vpp-alerts.test.yml"], "SUCCESS"),
    ],
)
def test_promtool(args: list[str], expected: str) -> None:
    out = subprocess.run(
        [promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    assert expected in out.stdout + out.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check has teeth: a rule with a bad expression is refused, with the reason."""
    bad = tmp_path / "bad.rules.yml"
    bad.write_text(RULES_FILE.read_text().replace("vpp_dispatch_leader)", "vpp_dispatch_leader"))
    out = subprocess.run(
        [promtool(), "check", "rules", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "parse error" in out.stdout + out.stderr
