"""deploy/app/: the TwinMe API's Kubernetes manifests, checked as an SRE would before applying them.

- Every object is validated, strictly (unknown fields are errors), against the Kubernetes OpenAPI
  schemas that ``kubernetes-validate`` ships, for every version from the oldest supported cluster
  (1.30: the preStop ``sleep`` action is on by default from there) to the newest it knows.
- Policy: digest-pinned image, resources, probes, restricted security context, rollout settings,
  and that the objects point at each other (selectors, ports, names) as the cluster would resolve
  them.
- The release code path accepts the Deployment: it is created in kmock's emulator through the
  official client, and the real ``api_deployment`` asset, with the tool's default namespace,
  deployment and container names, deploys a new digest onto it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from tests.support.k8s_emulator import DeploymentController, EmulatorHandle, apps_api
from tests.support.kubernetes_versions import VERSIONS
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.release.assets import CONTAINER_IMAGE, api_deployment
from twinme_ops.defs.release.jwt_resources import JwtKeysResource
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.servers.kube import KubernetesResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

APP_DIR = Path(__file__).resolve().parents[2] / "deploy" / "app"
SECRET_TEMPLATE = APP_DIR / "templates" / "secret.template.yaml"
JWT_SECRET_TEMPLATE = APP_DIR / "templates" / "jwt-keys-secret.yaml"
NAMESPACE = "twinme-prod"
DIGEST_REF = re.compile(r"^[a-z0-9.\-:/_]+@sha256:[0-9a-f]{64}$")
NEW_IMAGE = "127.0.0.1:5000/twinme-api@sha256:" + "3" * 64


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def applied_files() -> list[Path]:
    """What ``kubectl apply -f deploy/app/`` reads: the folder's own manifests, in its order."""
    return sorted(p for p in APP_DIR.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def applied_objects() -> list[dict[str, Any]]:
    return [doc for path in applied_files() for doc in _docs(path)]


def one(kind: str) -> dict[str, Any]:
    """The single applied object of ``kind``."""
    found = [doc for doc in applied_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/app/, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return one("Deployment")["spec"]["template"]["spec"]


def pod_labels() -> dict[str, str]:
    return one("Deployment")["spec"]["template"]["metadata"]["labels"]


def api_container() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == "api"]
    return container


def selects_pods(match_labels: dict[str, str]) -> bool:
    """Whether a ``matchLabels`` selector selects the API pods (and is not empty)."""
    labels = pod_labels()
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def container_port(port: int | str) -> int:
    """A port as the cluster resolves it against the api container: a number or a port name."""
    ports = api_container()["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"no container port {port}"
        return port
    by_name = {p["name"]: p["containerPort"] for p in ports if "name" in p}
    assert port in by_name, f"no container port named {port!r}; names: {sorted(by_name)}"
    return by_name[port]


# -- schema validation -------------------------------------------------------------------------


def all_manifest_files() -> list[Path]:
    return [*applied_files(), SECRET_TEMPLATE, JWT_SECRET_TEMPLATE]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", all_manifest_files(), ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schemas_cover_the_newest_kubernetes() -> None:
    """The version matrix is not empty and reaches at least a current release."""
    assert VERSIONS[0] == "1.30.0"
    assert Version(VERSIONS[-1]) >= Version("1.33")


@pytest.mark.parametrize(
    ("where", "typo", "right"),
    [
        (
            ("spec", "template", "spec", "containers", 0, "securityContext"),
            "readOnlyRootFileSystem",
            "readOnlyRootFilesystem",
        ),
        (("spec", "template", "spec"), "topologySpreadConstraint", "topologySpreadConstraints"),
        (("spec", "strategy", "rollingUpdate"), "maxUnavailible", "maxUnavailable"),
    ],
)
def test_strict_validation_rejects_a_typo(where: tuple[Any, ...], typo: str, right: str) -> None:
    """A misspelt field is silently dropped by a lenient apply: strict validation must fail."""
    doc = copy.deepcopy(one("Deployment"))
    node: Any = doc
    for key in where:
        node = node[key]
    node[typo] = node.pop(right)
    kubernetes_validate.validate(doc, VERSIONS[-1], strict=False)  # lenient: passes
    with pytest.raises(kubernetes_validate.ValidationError, match=typo):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_validation_rejects_a_wrong_type() -> None:
    doc = copy.deepcopy(one("HorizontalPodAutoscaler"))
    doc["spec"]["maxReplicas"] = "30"
    with pytest.raises(kubernetes_validate.ValidationError, match="'30' is not of type"):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


# -- what `kubectl apply -f deploy/app/` does --------------------------------------------------


def test_apply_creates_the_namespace_first_and_everything_in_it() -> None:
    files = applied_files()
    kinds = [doc["kind"] for doc in applied_objects()]
    assert _docs(files[0])[0]["kind"] == "Namespace", "the namespace must be applied first"
    assert sorted(kinds) == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "NetworkPolicy",
            "Deployment",
            "Service",
            "Ingress",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
        ]
    )
    assert one("Namespace")["metadata"]["name"] == NAMESPACE
    for doc in applied_objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_apply_never_touches_the_real_secret() -> None:
    """The template is out of the applied folder: an apply cannot blank the production Secret."""
    assert "Secret" not in [doc["kind"] for doc in applied_objects()]
    assert SECRET_TEMPLATE.parent != APP_DIR


def test_the_namespace_enforces_the_restricted_pod_security_profile() -> None:
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the Deployment ----------------------------------------------------------------------------


def test_every_image_is_pinned_by_digest() -> None:
    containers = pod_spec()["containers"] + pod_spec().get("initContainers", [])
    for container in containers:
        image = container["image"]
        assert ":latest" not in image and DIGEST_REF.match(image), (
            f"container {container['name']}: {image!r} is not a digest reference"
        )
    # the placeholder cannot be pulled by mistake: .invalid never resolves (RFC 2606)
    assert api_container()["image"].startswith("registry.invalid/twinme-api@sha256:")


def _cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * factor
    return int(q)


def test_every_container_has_requests_and_limits() -> None:
    for container in pod_spec()["containers"]:
        res = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res[kind]), f"{container['name']}: {kind}"
        assert _cpu(res["requests"]["cpu"]) <= _cpu(res["limits"]["cpu"])
        assert _bytes(res["requests"]["memory"]) <= _bytes(res["limits"]["memory"])
    # the specification's sizing
    res = api_container()["resources"]
    assert (res["requests"]["cpu"], res["requests"]["memory"]) == ("250m", "256Mi")
    assert (res["limits"]["cpu"], res["limits"]["memory"]) == ("500m", "512Mi")


def test_probes_hit_health_and_ready_on_the_api_port() -> None:
    container = api_container()
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/health" and container_port(liveness["port"]) == 3000
    assert readiness["path"] == "/ready" and container_port(readiness["port"]) == 3000
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    # the startup probe gives a slow start its time, liveness then reacts within 30 s
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] <= 30


def _dockerfile_user() -> int:
    users = re.findall(
        r"^USER\s+(\d+)", (APP_DIR / "Dockerfile.production").read_text(), re.MULTILINE
    )
    assert users, "Dockerfile.production sets no numeric USER"
    return int(users[-1])


def test_every_container_runs_locked_down() -> None:
    """Effective security context (container settings override the pod's), as the kubelet sees."""
    pod = pod_spec()
    pod_ctx = pod.get("securityContext", {})
    for container in pod["containers"]:
        ctx = {**pod_ctx, **container.get("securityContext", {})}
        name = container["name"]
        assert ctx.get("runAsNonRoot") is True, name
        assert ctx.get("runAsUser") == 1000 == _dockerfile_user(), name
        assert ctx.get("readOnlyRootFilesystem") is True, name
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert ctx.get("privileged", False) is False, name
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not ctx.get("capabilities", {}).get("add"), name
        assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
    # read-only root: /tmp is a size-limited emptyDir
    (tmp,) = [m for m in api_container()["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "sizeLimit" in volume["emptyDir"]
    assert not [v for v in pod["volumes"] if "hostPath" in v]
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_the_pods_get_no_kubernetes_token() -> None:
    account = one("ServiceAccount")
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert pod_spec()["automountServiceAccountToken"] is False


def test_rollouts_keep_capacity_and_fail_before_the_tool_gives_up() -> None:
    spec = one("Deployment")["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] not in (0, "0%")
    # the cluster's ProgressDeadlineExceeded must come before the release's own timeout
    assert 0 < spec["progressDeadlineSeconds"] < KubernetesResource().rollout_timeout_s
    # `kubectl rollout undo` needs old ReplicaSets
    assert spec["revisionHistoryLimit"] >= 3
    assert selects_pods(spec["selector"]["matchLabels"])
    # the replica count belongs to the HPA: an apply must not reset it
    assert "replicas" not in spec
    assert (
        spec["template"]["spec"]["terminationGracePeriodSeconds"]
        > (api_container()["lifecycle"]["preStop"]["sleep"]["seconds"])
    )


def test_pods_spread_across_zones_and_nodes() -> None:
    constraints = pod_spec()["topologySpreadConstraints"]
    keys = {c["topologyKey"]: c for c in constraints}
    assert set(keys) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in constraints:
        assert constraint["maxSkew"] == 1
        assert selects_pods(constraint["labelSelector"]["matchLabels"])
    assert keys["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "DoNotSchedule"


def test_the_secret_feeds_the_api_environment() -> None:
    (secret,) = _docs(SECRET_TEMPLATE)
    refs = [e["secretRef"]["name"] for e in api_container()["envFrom"] if "secretRef" in e]
    assert refs == [secret["metadata"]["name"]]
    assert secret["metadata"]["namespace"] == NAMESPACE


def test_the_api_reads_the_jwt_key_set_the_rotation_writes() -> None:
    """The rotation writes ``jwks.json`` into Secret twinme-jwt-keys (created, never applied);
    the API mounts that Secret read-only and is told where the key set is."""
    (secret,) = _docs(JWT_SECRET_TEMPLATE)
    assert secret["metadata"]["name"] == JwtKeysResource().secret_name
    assert secret["metadata"]["namespace"] == NAMESPACE and "data" not in secret
    (volume,) = [v for v in pod_spec()["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (mount,) = [m for m in api_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in api_container()["env"]}
    assert env["TWINME_JWT_KEYS_FILE"] == f"{mount['mountPath']}/jwks.json"


# -- the objects around it ---------------------------------------------------------------------


def test_the_service_reaches_the_pods_on_the_api_port() -> None:
    service = one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert selects_pods(service["spec"]["selector"])
    (port,) = service["spec"]["ports"]
    assert container_port(port["targetPort"]) == 3000


def test_the_ingress_serves_tls_through_the_service_with_a_rate_limit() -> None:
    ingress = one("Ingress")
    service = one("Service")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    (tls,) = spec["tls"]
    assert tls["secretName"]
    for rule in spec["rules"]:
        assert rule["host"] in tls["hosts"], f"{rule['host']} is served without TLS"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            ports = {p.get("name") for p in service["spec"]["ports"]}
            ports |= {p["port"] for p in service["spec"]["ports"]}
            assert backend["port"].get("name", backend["port"].get("number")) in ports
    annotations = ingress["metadata"]["annotations"]
    # the specification's 10 r/s per client, burst 20, as ingress-nginx understands it
    assert annotations["nginx.ingress.kubernetes.io/limit-rps"] == "10"
    assert annotations["nginx.ingress.kubernetes.io/limit-burst-multiplier"] == "2"
    assert annotations["cert-manager.io/cluster-issuer"]
    # annotations ingress-nginx ignores (the specification's) or that are deprecated
    for ignored in (
        "nginx.ingress.kubernetes.io/rate-limit",
        "nginx.ingress.kubernetes.io/rate-limit-window",
        "kubernetes.io/ingress.class",
    ):
        assert ignored not in annotations


def test_the_autoscaler_goes_from_3_to_10x_on_cpu() -> None:
    hpa = one("HorizontalPodAutoscaler")
    deployment = one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 30)
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # CPU utilization is a share of the request: without one the HPA cannot compute it
    assert "cpu" in api_container()["resources"]["requests"]


def test_the_disruption_budget_covers_the_pods_and_lets_drains_proceed() -> None:
    pdb = one("PodDisruptionBudget")["spec"]
    assert selects_pods(pdb["selector"]["matchLabels"])
    min_replicas = one("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    # one eviction at a time: at the minimum, 2 of 3 pods keep serving, and a drain is possible
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    assert min_replicas - pdb["maxUnavailable"] >= 2


def test_the_network_policy_admits_only_the_ingress_controller_and_monitoring() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert selects_pods(policy["podSelector"]["matchLabels"])
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = policy["ingress"]
    sources = sorted(
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in rule["from"]
    )
    assert sources == ["ingress-nginx", "monitoring"]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    assert [container_port(p["port"]) for p in rule["ports"]] == [3000]
    egress = {(p.get("protocol", "TCP"), p["port"]) for r in policy["egress"] for p in r["ports"]}
    assert egress == {
        ("UDP", 53),
        ("TCP", 53),
        ("TCP", 5432),
        ("TCP", 6379),
        ("TCP", 26379),
        ("TCP", 443),
    }
    (https,) = [r for r in policy["egress"] if r["ports"][0]["port"] == 443]
    # the cloud metadata endpoint (and the credentials it serves) stays out of reach
    assert all(
        "169.254.0.0/16" in peer["ipBlock"]["except"]
        for peer in https["to"]
        if peer["ipBlock"]["cidr"] == "0.0.0.0/0"
    )


def test_the_secret_template_has_keys_and_no_values() -> None:
    (secret,) = _docs(SECRET_TEMPLATE)
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert "data" not in secret
    values = secret["stringData"]
    assert {"DATABASE_URL", "REDIS_URL"} <= set(values)
    for key, value in values.items():
        assert value == "", f"{key} has a value in the template"
        # envFrom skips keys that are not valid environment variable names
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), key
    assert "kubectl -n twinme-prod create secret generic twinme-secrets" in (
        SECRET_TEMPLATE.read_text()
    )


# -- the manifests and the tool agree ----------------------------------------------------------


def test_the_tool_defaults_name_these_objects() -> None:
    deployment = one("Deployment")
    kube = KubernetesResource()
    assert (kube.namespace, kube.deployment) == (
        deployment["metadata"]["namespace"],
        deployment["metadata"]["name"],
    )
    assert ReleaseSettings().container == api_container()["name"]


def _read_back(api: Any) -> dict[str, Any]:
    """The Deployment as the official client models it, serialised back to plain JSON."""
    deployment = api.read_namespaced_deployment("twinme-api", NAMESPACE)
    return api.api_client.sanitize_for_serialization(deployment)


def test_the_release_step_deploys_a_digest_onto_this_deployment(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    """The manifest's Deployment, created through the official client, then the real
    ``api_deployment`` asset with the tool's default names: the image changes, nothing else."""
    kubeconfig, _ = k8s_emulator
    manifest = one("Deployment")
    api = apps_api(kubeconfig)
    api.create_namespaced_deployment(NAMESPACE, copy.deepcopy(manifest))
    controller = DeploymentController(kubeconfig).start()
    try:
        controller.wait_settled()
        # the official client reads back every field: none is unknown to it and lost on the way
        read = _read_back(api)
        assert read["spec"] == manifest["spec"]

        resources = {
            # only the cluster is given: namespace, deployment and container are the defaults
            "kubernetes": KubernetesResource(
                kubeconfig=str(kubeconfig), rollout_timeout_s=20, poll_interval_s=0.05
            ),
            "release_settings": ReleaseSettings(),
            # reached only by a rollback, which a healthy rollout does not do
            "postgres": PostgresResource(url="postgresql://unused@127.0.0.1:9/unused"),
            "redis": RedisResource(url="redis://127.0.0.1:9/0"),
            "slack": SlackNotifier(),
            "metrics": MetricsResource(),  # no gateway: logged only
        }
        defs = dg.Definitions(
            assets=[api_deployment],
            jobs=[dg.define_asset_job("deploy", selection=[api_deployment])],
            resources=resources,
        )
        instance = dg.DagsterInstance.ephemeral()
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                CONTAINER_IMAGE, metadata={"image_ref": NEW_IMAGE, "sha": "b" * 40}
            )
        )
        result = defs.resolve_job_def("deploy").execute_in_process(instance=instance)
        assert result.success
        (materialization,) = result.asset_materializations_for_node("api_deployment")
        metadata = materialization.metadata
        assert metadata["previous_image"].value == api_container()["image"]
        assert metadata["image"].value == NEW_IMAGE

        after = _read_back(api)
        expected = copy.deepcopy(manifest["spec"])
        expected["template"]["spec"]["containers"][0]["image"] = NEW_IMAGE
        assert after["spec"] == expected
        assert after["metadata"]["annotations"]["kubernetes.io/change-cause"].startswith(
            "twinme release bbbb"
        )
    finally:
        controller.stop()
