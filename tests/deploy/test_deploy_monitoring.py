"""deploy/monitoring/: Prometheus config and alert rules checked and unit-tested by promtool, the
blackbox module run by the real blackbox exporter against a real TLS server, and the Grafana
dashboard's queries checked for syntax and for metric names the code really pushes.

Debian's promtool (the one CI installs) is built without Kubernetes service discovery: it refuses
``kubernetes_sd_configs``, which Prometheus in the cluster needs. When the installed promtool
lacks it, the config is checked with each ``kubernetes_sd_configs`` swapped for a static target
(every other line unchanged, the rule files beside it), and the Kubernetes discovery blocks are
checked here instead: roles, namespaces, and what their relabelling keeps, simulated on the API
Deployment's own pod template from deploy/app/.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from twinme_ops.alerting.metric_specs import METRICS
from twinme_ops.scratch.local import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
ALERT_RULES = MONITORING / "alert_rules.yml"
ALERT_TESTS = MONITORING / "alert_rules_test.yml"
BLACKBOX_YML = MONITORING / "blackbox.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "twinme-production.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "twinme.yml"
API_DEPLOYMENT = ROOT / "deploy" / "app" / "30-deployment.yaml"
BLACKBOX = "prometheus-blackbox-exporter"

# Metrics of the exporters Prometheus scrapes (not pushed by twinme_ops): the API's own
# (names from the specification's dashboard), postgres-exporter, node_exporter, the blackbox
# exporter, and Prometheus's `up`.
EXPORTER_METRICS = {
    "http_request_duration_seconds_bucket",
    "http_requests_total",
    "pg_stat_database_numbackends",
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "probe_ssl_earliest_cert_expiry",
    "probe_success",
    "up",
    # CloudNativePG's instance metrics (deploy/postgres/60-podmonitor.yaml)
    "cnpg_pg_stat_archiver_seconds_since_last_archival",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (Debian ships it there)")
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(PROMETHEUS_YML)["scrape_configs"]}


# ------------------------------------------------------------------------------------ PromQL

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (not functions, labels, keywords or numbers)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values may contain anything
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    found = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", s):
        rest = s[m.end() :].lstrip()
        if rest.startswith("(") or m.group(1).lower() in _KEYWORDS:
            continue
        found.add(m.group(1))
    return found


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le) (rate(http_request_duration_seconds_bucket{job="twinme_ops", a=~"x(y)"}'
        "[5m])) / on (job) group_left (pod) up > bool 0.2 * 1e3 or absent(twinme_deploy_success)"
    )
    assert metric_names(expr) == {
        "http_request_duration_seconds_bucket",
        "up",
        "twinme_deploy_success",
    }


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    ]


# -------------------------------------------------------------------------------- prometheus.yml


def _promtool_has_kubernetes_sd(tmp_path: Path) -> bool:
    probe = tmp_path / "k8s-probe.yml"
    probe.write_text("scrape_configs:\n  - job_name: x\n    kubernetes_sd_configs: [{role: pod}]\n")
    return run(promtool(), "check", "config", str(probe)).returncode == 0


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    config = load_yaml(PROMETHEUS_YML)
    # rule_files are relative to the config file: they must exist beside it
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_YML.parent / rule_file).is_file(), rule_file
    if _promtool_has_kubernetes_sd(tmp_path):
        target = PROMETHEUS_YML
    else:
        swapped = copy.deepcopy(config)
        for job in swapped["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["discovered.invalid:3000"]}]
        target = tmp_path / "prometheus.yml"
        target.write_text(yaml.safe_dump(swapped, sort_keys=False))
        for rule_file in config["rule_files"]:
            shutil.copy(PROMETHEUS_YML.parent / rule_file, tmp_path / rule_file)
    result = run(promtool(), "check", "config", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    # the rule file was found beside the config, loaded and checked
    assert "SUCCESS: 2 rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout
    assert "SUCCESS: 20 rules found" in result.stdout  # slo_rules.yml


def test_promtool_would_catch_a_broken_config(tmp_path: Path) -> None:
    # the check above is not vacuous: a broken relabel regex is refused
    config = load_yaml(PROMETHEUS_YML)
    for job in config["scrape_configs"]:
        job.pop("kubernetes_sd_configs", None)
        job.setdefault("static_configs", [{"targets": ["x:1"]}])
    config["scrape_configs"][0]["relabel_configs"][0]["regex"] = "twinme-api("
    config["rule_files"] = []
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(config))
    result = run(promtool(), "check", "config", str(broken))
    assert result.returncode != 0 and "error parsing regexp" in result.stdout + result.stderr


def _relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabelling (keep, drop, replace), enough for prometheus.yml's rules."""
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        regex = c.get("regex", "(.*)")
        regex = str(regex).lower() if isinstance(regex, bool) else str(regex)  # YAML `true`
        m = re.fullmatch(regex, value)
        if action == "keep" and m is None or action == "drop" and m is not None:
            return None
        if action == "replace" and m is not None:
            # Prometheus's $1 / ${1} are Python's \g<1>
            template = re.sub(r"\$\{(\d+)\}|\$(\d+)", r"\\g<\1\2>", str(c.get("replacement", "$1")))
            labels[c["target_label"]] = m.expand(template)
        assert action in ("keep", "drop", "replace"), action
    return labels


def _pod_targets(
    template: dict[str, Any], namespace: str, name: str, ip: str, phase: str = "Running"
) -> list[dict[str, str]]:
    """The targets kubernetes_sd role `pod` makes for a pod: one per declared container port."""

    def sanitize(key: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", key)

    meta = template["metadata"]
    common = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_node_name": "node-a",
        **{f"__meta_kubernetes_pod_label_{sanitize(k)}": v for k, v in meta["labels"].items()},
        **{
            f"__meta_kubernetes_pod_annotation_{sanitize(k)}": v
            for k, v in meta.get("annotations", {}).items()
        },
    }
    targets = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            targets.append(
                {
                    **common,
                    "__address__": f"{ip}:{port['containerPort']}",
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
            )
    return targets


def _scraped(job: dict[str, Any], targets: list[dict[str, str]]) -> list[dict[str, str]]:
    kept = [_relabel(t, job.get("relabel_configs", [])) for t in targets]
    return [t for t in kept if t is not None]


def test_each_api_pod_is_scraped_once_on_its_metrics_port() -> None:
    jobs = scrape_jobs()
    api_job, generic = jobs["twinme-api"], jobs["kubernetes-pods"]
    (sd,) = api_job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["namespaces"]["names"] == ["twinme-prod"]
    assert api_job["metrics_path"] == "/metrics"

    deployment = load_yaml(API_DEPLOYMENT)
    template = deployment["spec"]["template"]
    namespace = deployment["metadata"]["namespace"]
    # the Deployment's pods, with an extra (non-metrics) port to show only `http` is kept
    template = copy.deepcopy(template)
    template["spec"]["containers"][0]["ports"].append({"name": "debug", "containerPort": 9229})
    pods = [_pod_targets(template, namespace, f"twinme-api-{i}", f"10.1.0.{i}") for i in (1, 2, 3)]
    scraped = [t for pod in pods for t in _scraped(api_job, pod)]
    assert [t["__address__"] for t in scraped] == [
        "10.1.0.1:3000",
        "10.1.0.2:3000",
        "10.1.0.3:3000",
    ]
    assert [t["pod"] for t in scraped] == ["twinme-api-1", "twinme-api-2", "twinme-api-3"]
    assert {t["namespace"] for t in scraped} == {"twinme-prod"}
    # the generic annotation job would scrape them too: it must leave them to twinme-api
    assert not [t for pod in pods for t in _scraped(generic, pod)]
    # a pod still starting (Pending) has no server to scrape
    pending = _pod_targets(template, namespace, "twinme-api-4", "10.1.0.4", phase="Pending")
    assert not _scraped(api_job, pending)


def test_other_annotated_pods_are_scraped_on_their_annotated_port_and_path() -> None:
    template = {
        "metadata": {
            "labels": {"app": "postgres-exporter"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9187",
                "prometheus.io/path": "/probe-metrics",
            },
        },
        "spec": {"containers": [{"name": "exporter", "ports": [{"containerPort": 8080}]}]},
    }
    generic = scrape_jobs()["kubernetes-pods"]
    (target,) = _scraped(generic, _pod_targets(template, "monitoring", "pg-exp", "10.2.0.9"))
    assert target["__address__"] == "10.2.0.9:9187"
    assert target["__metrics_path__"] == "/probe-metrics"
    template["metadata"]["annotations"]["prometheus.io/scrape"] = "false"
    assert not _scraped(generic, _pod_targets(template, "monitoring", "pg-exp", "10.2.0.9"))


def test_nodes_pushgateway_and_tls_probe_targets() -> None:
    jobs = scrape_jobs()
    node = jobs["node-exporter"]
    assert node["kubernetes_sd_configs"] == [{"role": "node"}]
    (target,) = _scraped(
        node,
        [
            {
                "__address__": "10.0.0.7:10250",  # the kubelet, which node SD gives by default
                "__meta_kubernetes_node_address_InternalIP": "10.0.0.7",
                "__meta_kubernetes_node_name": "node-a",
            }
        ],
    )
    assert target["__address__"] == "10.0.0.7:9100" and target["node"] == "node-a"

    # pushed groups keep their own job="twinme_ops" / operation labels
    assert jobs["pushgateway"]["honor_labels"] is True

    tls = jobs["blackbox-tls"]
    (module,) = tls["params"]["module"]
    assert module in load_yaml(BLACKBOX_YML)["modules"]
    (url,) = tls["static_configs"][0]["targets"]
    (probe,) = _scraped(tls, [{"__address__": url}])
    assert probe == {
        "__address__": "blackbox-exporter:9115",
        "__param_target": "https://api.twinme.ai/health",
        "instance": "https://api.twinme.ai/health",
    }


# ---------------------------------------------------------------------------------- alert rules


def test_alert_rules_pass_promtool_check() -> None:
    result = run(promtool(), "check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rules_unit_tests_pass() -> None:
    result = run(promtool(), "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert fires == alerts, alerts - fires
    assert silent == alerts, alerts - silent


def test_alerts_hold_the_spec_targets_and_the_operations() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    assert exprs["TwinmeApiLatencyHigh"].startswith("histogram_quantile(0.95,")
    assert exprs["TwinmeApiLatencyHigh"].endswith("> 0.2")
    assert exprs["TwinmeApiErrorRateHigh"].endswith("> 0.001")
    assert exprs["TwinmeNodeCpuHigh"].endswith("> 0.70")
    assert exprs["TwinmeNodeMemoryHigh"].endswith("> 0.80")
    assert exprs["TwinmeNodeDiskHigh"].endswith("> 0.85")
    assert "> 26 * 3600" in exprs["TwinmeBackupTooOld"]
    assert exprs["TwinmeRestoreDrillFailed"] == "twinme_restore_drill_success == 0"
    assert exprs["TwinmeDeployRolledBack"] == "twinme_deploy_rolled_back == 1"
    assert exprs["TwinmeDeployRollbackUnhealthy"] == "twinme_deploy_rollback_healthy == 0"
    assert "probe_ssl_earliest_cert_expiry" in exprs["TwinmeTlsCertificateExpiring"]
    assert exprs["TwinmeWalArchiveBehind"] == "twinme_wal_archive_rpo_seconds > 120"
    assert exprs["TwinmeWalReceiverDown"] == "twinme_wal_archive_receiver_up == 0"
    assert (
        "cnpg_pg_stat_archiver_seconds_since_last_archival) > 120"
        in (exprs["TwinmeCnpgWalArchiveBehind"])
    )
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_read_only_metrics_the_code_pushes_or_exporters_expose() -> None:
    used: set[str] = set()
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    twinme = {n for n in used if n.startswith("twinme_")}
    assert twinme <= set(METRICS), twinme - set(METRICS)
    assert used - twinme <= EXPORTER_METRICS, used - twinme - EXPORTER_METRICS
    # the unit tests feed the alerts series under the same names
    series_names = {
        s["series"].split("{", 1)[0]
        for case in load_yaml(ALERT_TESTS)["tests"]
        for s in case["input_series"]
    }
    assert {n for n in series_names if n.startswith("twinme_")} <= set(METRICS)


# ------------------------------------------------------------------------------------- Grafana


def test_dashboard_has_the_spec_panels_and_the_operations() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] == "TwinMe IA Production" and dash["uid"]
    panels = {p["title"]: p for p in dash["panels"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # the specification's four panels ("singlestat" no longer exists in Grafana: stat)
    assert panels["API Response Time"]["type"] == "timeseries"
    legends = [t["legendFormat"] for t in panels["API Response Time"]["targets"]]
    assert legends == ["95th percentile", "50th percentile"]
    assert panels["Request Rate"]["type"] == "timeseries"
    assert panels["Error Rate"]["type"] == "stat"
    assert panels["Database Connections"]["type"] == "timeseries"
    for title in ("Backup age", "Restore drill RTO", "Deploys", "RPO (WAL archive)"):
        assert title in panels
    # every query panel reads the provisioned datasource
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_queries_are_valid_promql_on_known_metrics(tmp_path: Path) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 15
    # the SLO row reads series recorded by slo_rules.yml
    slo_groups = load_yaml(MONITORING / "slo_rules.yml")["groups"]
    recorded = {r["record"] for g in slo_groups for r in g["rules"] if "record" in r}
    known = EXPORTER_METRICS | recorded
    twinme: set[str] = set()
    for title, expr in targets:
        names = metric_names(expr)
        assert names, f"{title}: {expr} reads no metric"
        twinme |= {n for n in names if n.startswith("twinme_")}
        others = {n for n in names if not n.startswith("twinme_")}
        assert others <= known, f"{title}: unknown {others - known}"
    assert twinme <= set(METRICS), twinme - set(METRICS)
    # backups, drills and releases are all on the dashboard
    for prefix in ("twinme_backup_", "twinme_restore_drill_", "twinme_deploy_", "twinme_wal_"):
        assert any(n.startswith(prefix) for n in twinme), prefix

    # promtool parses each query (as a recording rule), Grafana's range variables substituted
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr.replace("$__range", "1d")}
                    for i, (_, expr) in enumerate(targets)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool(), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(targets)} rules found" in result.stdout


def test_grafana_provisioning_files() -> None:
    datasources = load_yaml(DATASOURCES)
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http://") and ds["isDefault"]
    providers = load_yaml(DASHBOARD_PROVIDERS)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# --------------------------------------------------------------------------- blackbox exporter


def blackbox() -> str:
    path = shutil.which(BLACKBOX)
    if path is None:
        pytest.fail(f"{BLACKBOX} is missing: apt-get install prometheus-blackbox-exporter")
    return path


def test_blackbox_config_is_accepted() -> None:
    result = run(blackbox(), "--config.check", f"--config.file={BLACKBOX_YML}")
    assert result.returncode == 0, result.stderr
    assert "Config file is ok" in result.stderr


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and its key; ``expiry`` is notAfter (Unix time)."""

    cert: Path
    key: Path
    expiry: float


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    """A certificate valid 10 days, made by openssl."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        + ["-nodes", "-days", "10", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    end = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    not_after = datetime.strptime(end.removeprefix("notAfter="), "%b %d %H:%M:%S %Y GMT")
    return Certificate(cert, key, not_after.replace(tzinfo=UTC).timestamp())


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return None


def _tls_server(certificate: Certificate, tls13: bool) -> http.server.ThreadingHTTPServer:
    """An HTTPS server answering 200 on 127.0.0.1, TLS 1.3 only or TLS 1.2 at most."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certificate.cert, certificate.key)
    if tls13:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def blackbox_exporter(tmp_path: Path, certificate: Certificate) -> Iterator[str]:
    """The blackbox exporter with deploy/monitoring/blackbox.yml, trusting the test certificate.

    The module is the production one; only ``tls_config.ca_file`` is added so that the test's
    self-signed certificate is trusted like a public one is in production.
    """
    config = load_yaml(BLACKBOX_YML)
    for module in config["modules"].values():
        module["http"].setdefault("tls_config", {})["ca_file"] = str(certificate.cert)
    path = tmp_path / "blackbox.yml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "blackbox.log"
    for _ in range(3):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [blackbox(), f"--config.file={path}", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(url + "/-/healthy", timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            try:
                yield url
            finally:
                proc.terminate()
                proc.wait(10)
            return
    pytest.fail(f"the blackbox exporter did not start:\n{log.read_text()[-2000:]}")


def _probe(exporter: str, target: str) -> dict[str, float]:
    module = scrape_jobs()["blackbox-tls"]["params"]["module"][0]
    with urllib.request.urlopen(
        f"{exporter}/probe?module={module}&target={target}", timeout=30
    ) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_tls_probe_reads_the_certificate_expiry_and_requires_tls13(
    blackbox_exporter: str, certificate: Certificate
) -> None:
    modern = _tls_server(certificate, tls13=True)
    legacy = _tls_server(certificate, tls13=False)
    try:
        got = _probe(blackbox_exporter, f"https://127.0.0.1:{modern.server_address[1]}/health")
        assert got["probe_success"] == 1
        assert got["probe_ssl_earliest_cert_expiry"] == certificate.expiry
        # 10 days left: under the 14 days of TwinmeTlsCertificateExpiring
        assert got["probe_ssl_earliest_cert_expiry"] - time.time() < 14 * 86400
        # TLS 1.2 only (the specification's nginx example allowed it): the probe fails
        got = _probe(blackbox_exporter, f"https://127.0.0.1:{legacy.server_address[1]}/health")
        assert got["probe_success"] == 0
    finally:
        for server in (modern, legacy):
            server.shutdown()
            server.server_close()
