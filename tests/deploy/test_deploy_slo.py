"""deploy/monitoring/slo_rules.yml: the API's SLOs (99.9 % availability, 95 % of requests under
200 ms) as recording rules and multi-window multi-burn-rate alerts, checked and unit-tested by
promtool, evaluated on what the sample API (examples/twinme-api) really exposes on /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_deploy_monitoring import DASHBOARD, metric_names
from twinme_ops.scratch.local import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
SLO_RULES = MONITORING / "slo_rules.yml"
SLO_TESTS = MONITORING / "slo_rules_test.yml"
SAMPLE_API = ROOT / "examples" / "twinme-api"
# (burn rate, long window, short window, what it raises), Google SRE workbook table 5-8
BURN_TIERS = [(14.4, "1h", "5m", "page"), (6.0, "6h", "30m", "page"), (1.0, "3d", "6h", "ticket")]
BUDGETS = {"availability": 0.001, "latency": 0.05}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian ships it there)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(SLO_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_slo_rules_pass_promtool_check() -> None:
    result = run(promtool(), "check", "rules", str(SLO_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 20 rules found" in result.stdout


def test_slo_unit_tests_pass() -> None:
    # fast burn pages, slow burn tickets, healthy traffic silent, latency burn pages
    result = run(promtool(), "test", "rules", str(SLO_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_slo_alert_is_tested_firing_and_silent() -> None:
    fires: dict[str, set[str]] = {}
    silent: set[str] = set()
    for case in yaml.safe_load(SLO_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check["exp_alerts"]:
                for exp in check["exp_alerts"]:
                    fires.setdefault(check["alertname"], set()).add(exp["exp_labels"]["action"])
            else:
                silent.add(check["alertname"])
    assert set(fires) == set(alerts()) == silent
    assert fires["TwinmeApiAvailabilityBudgetFastBurn"] == {"page"}
    assert fires["TwinmeApiAvailabilityBudgetSlowBurn"] == {"ticket"}
    assert fires["TwinmeApiLatencyBudgetFastBurn"] == {"page"}


def test_alerts_use_the_workbook_burn_rates_and_windows() -> None:
    for slo, budget in BUDGETS.items():
        prefix = "slo:api_availability_errors" if slo == "availability" else "slo:api_latency_slow"
        title = slo.capitalize()
        fast = alerts()[f"TwinmeApi{title}BudgetFastBurn"]
        slow = alerts()[f"TwinmeApi{title}BudgetSlowBurn"]
        for rule, tiers in ((fast, BURN_TIERS[:2]), (slow, BURN_TIERS[2:])):
            expr = " ".join(rule["expr"].split())
            for rate, long, short, action in tiers:
                factor = "" if rate == 1 else f"{rate:g} * "
                for window in (long, short):
                    assert f"{prefix}:ratio_rate{window} > {factor}{budget}" in expr, (expr, window)
                assert rule["labels"]["action"] == action
            assert rule["labels"]["severity"] == ("critical" if rule is fast else "warning")
            assert "for" not in rule  # the short window already debounces
    # every ratio an alert reads is recorded
    recorded = {r["record"] for r in rules() if "record" in r}
    for rule in alerts().values():
        assert metric_names(rule["expr"]) <= recorded, rule["alert"]


# ------------------------------------------------------------------------ the real sample API


@pytest.fixture(scope="module")
def sample_api() -> Iterator[str]:
    """examples/twinme-api's server, run by node on a free port."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: apt-get install nodejs (.ci/deps)")
    port = free_port()
    proc = subprocess.Popen(
        [node, "src/server.js"],
        cwd=SAMPLE_API,
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the sample API did not start")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of /metrics by sample name."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def test_the_slo_rules_read_series_the_sample_api_exposes(sample_api: str) -> None:
    assert get(f"{sample_api}/health") == 200
    assert get(f"{sample_api}/nope") == 404
    exposed = scrape(sample_api)
    raw = set()
    for rule in rules():
        raw |= {n for n in metric_names(rule["expr"]) if not n.startswith("slo:")}
    assert raw == {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_request_duration_seconds_count",
    }
    assert raw <= set(exposed), raw - set(exposed)
    # the labels the rules select on: the status code, and the SLO's 200 ms bucket
    statuses = {labels["status"] for labels, _ in exposed["http_requests_total"]}
    assert {"200", "404"} <= statuses
    buckets = {labels["le"] for labels, _ in exposed["http_request_duration_seconds_bucket"]}
    assert "0.2" in buckets and "+Inf" in buckets


def test_the_rules_evaluate_on_two_real_scrapes(sample_api: str, tmp_path: Path) -> None:
    """Two scrapes a minute apart (as Prometheus would take them, job label added), fed to
    promtool: the recorded ratios are what the API really served."""
    first = scrape(sample_api)
    codes = [get(f"{sample_api}/health") for _ in range(40)]
    codes += [get(f"{sample_api}/missing") for _ in range(5)]
    codes += [get(f"{sample_api}/health", method="POST") for _ in range(5)]
    assert sorted(set(codes)) == [200, 404, 405]
    second = scrape(sample_api)

    series = []
    for name in ("http_requests_total", "http_request_duration_seconds_bucket"):
        for labels, value in second[name]:
            before = next((v for lb, v in first.get(name, []) if lb == labels), 0.0)
            matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            selector = f'{name}{{job="twinme-api",{matchers}}}'
            series.append({"series": selector, "values": f"{before:g} {value:g}"})
    ((_, count1),) = first["http_request_duration_seconds_count"]
    ((_, count2),) = second["http_request_duration_seconds_count"]
    series.append(
        {
            "series": 'http_request_duration_seconds_count{job="twinme-api"}',
            "values": f"{count1:g} {count2:g}",
        }
    )
    rule_file = tmp_path / "slo_rules.yml"
    shutil.copy(SLO_RULES, rule_file)
    # nothing answered 5xx and every request took well under 200 ms
    expected = {
        "slo:api_availability_errors:ratio_rate5m": 0,
        "slo:api_latency_slow:ratio_rate5m": 0,
        "slo:api_availability_errors:budget_remaining": 1,
        # 50 requests, plus the second scrape itself
        "round(increase(http_requests_total[1m]))": 51,
    }
    case = {
        "rule_files": [rule_file.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    # sum(): one sample without labels, as exp_samples expects
                    {"expr": f"sum({expr})", "eval_time": "1m", "exp_samples": [{"value": value}]}
                    for expr, value in expected.items()
                ],
            }
        ],
    }
    test_file = tmp_path / "scraped_test.yml"
    test_file.write_text(yaml.safe_dump(case))
    result = run(promtool(), "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr

    # and the check is not vacuous: a wrong expectation fails
    case["tests"][0]["promql_expr_test"][0]["exp_samples"] = [{"value": 0.5}]
    test_file.write_text(yaml.safe_dump(case))
    assert run(promtool(), "test", "rules", str(test_file)).returncode != 0


def test_the_dashboard_has_an_slo_row() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: p for p in dash["panels"]}
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert any(re.match(r"SLOs", title) for title in rows)
    budget = [t["expr"] for t in panels["Error budget remaining"]["targets"]]
    assert budget == [
        "slo:api_availability_errors:budget_remaining",
        "slo:api_latency_slow:budget_remaining",
    ]
    burn = " ".join(t["expr"] for t in panels["Burn rate (1 h)"]["targets"])
    assert "slo:api_availability_errors:burn_rate1h" in burn
    assert "slo:api_latency_slow:burn_rate1h" in burn
