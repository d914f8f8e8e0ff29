"""deploy/dagster/: the ways into twinme_ops in production, checked before they are applied.

- **Single sign-on**: the Ingress (ingress-nginx, TLS) sends every request of both UIs through
  oauth2-proxy's check and passes upstream only the ``Authorization`` header it answers with;
  oauth2-proxy's configuration uses only options oauth2-proxy has, holds no secret, and names the
  same issuer, client and groups as the access policy the webserver enforces
  (``deploy/dagster/access.yaml``); the read-only webserver serves the viewers' host.
- **Network**: the NetworkPolicies of namespace ``dagster`` deny by default, and every path is
  evaluated (tests/support/network_policy.py) between the pods the chart, dagster-k8s and the
  manifests
  really create: the gRPC code server and the daemon are reachable from the Dagster pods only.
- **Least privilege**: the runs' ServiceAccount holds none of the verbs that would let a run read
  a Secret, exec into a pod, mint a token or widen its own rights.
- **Supply chain**: the image installs from a lock file in which every requirement is pinned and
  hashed and that satisfies pyproject.toml; every base image is pinned by digest.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import dagster_k8s.executor
import dagster_k8s.launcher
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tests.support.kubernetes_versions import VERSIONS
from tests.support.network_policy import Endpoint, allowed, each_path, selects

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "dagster"
NAMESPACE = "dagster"

# Every option oauth2-proxy reads from its config file: the `cfg:"..."` tags of
# pkg/apis/options in oauth2-proxy v7.15 (the image deploy/dagster/oauth2-proxy.yaml pins). A
# misspelt key is an error at start-up there; here it fails before anything is deployed.
_OPTION_NAMES = """
    acr_values allow_query_semicolons allowed_groups allowed_roles api_routes approval_prompt
    auth_logging auth_logging_format auth_request_response_mode authenticated_emails_file
    azure_graph_group_field azure_tenant backend_logout_url banner basic_auth_password
    bearer_token_login_fallback bitbucket_repository bitbucket_team client_id client_secret
    client_secret_file code_challenge_method cookie_csrf_expire cookie_csrf_per_request
    cookie_csrf_per_request_limit cookie_csrf_samesite cookie_domains cookie_expire
    cookie_httponly cookie_name cookie_path cookie_refresh cookie_samesite cookie_secret
    cookie_secret_file cookie_secure custom_sign_in_logo custom_templates_dir
    disable_keep_alives display_htpasswd_form email_domains encode_state
    entra_id_allowed_tenants entra_id_federated_token_auth errors_to_info_log
    exclude_logging_paths extra_jwt_issuers flush_interval footer force_code_challenge_method
    force_https force_json_errors gcp_healthchecks github_org github_repo github_team
    github_token github_users gitlab_groups gitlab_projects google_admin_api_user_scope
    google_admin_email google_group google_groups google_service_account_json
    google_target_principal google_use_application_default_credentials
    google_use_organization_id htpasswd_file htpasswd_user_groups http_address https_address
    insecure_oidc_allow_unverified_email insecure_oidc_skip_issuer_verification
    insecure_oidc_skip_nonce jwt_key jwt_key_file keycloak_groups logging_compress
    logging_filename logging_local_time logging_max_age logging_max_backups logging_max_size
    login_url metrics_address metrics_secure_address metrics_tls_cert_file metrics_tls_key_file
    oidc_audience_claims oidc_email_claim oidc_enabled_signing_algs oidc_extra_audiences
    oidc_groups_claim oidc_issuer_url oidc_jwks_url oidc_public_key_files pass_access_token
    pass_authorization_header pass_basic_auth pass_host_header pass_user_headers ping_path
    ping_user_agent prefer_email_to_user profile_url prompt provider provider_ca_files
    provider_display_name proxy_prefix proxy_websockets pubjwk_url ready_path
    real_client_ip_header redeem_url redirect_url redis_ca_path redis_cluster_connection_urls
    redis_connection_idle_timeout redis_connection_url redis_insecure_skip_tls_verify
    redis_password redis_sentinel_connection_urls redis_sentinel_master_name
    redis_sentinel_password redis_use_cluster redis_use_sentinel redis_username
    relative_redirect_url request_id_header request_logging request_logging_format resource
    reverse_proxy scope session_cookie_minimal session_store_type set_authorization_header
    set_basic_auth set_xauthrequest show_debug_on_error signature_key silence_ping_logging
    skip_auth_preflight skip_auth_regex skip_auth_routes skip_auth_strip_headers
    skip_claims_from_profile_url skip_jwt_bearer_tokens skip_oidc_discovery
    skip_provider_button ssl_insecure_skip_verify ssl_upstream_insecure_skip_verify
    standard_logging standard_logging_format tls_cert_file tls_cipher_suites tls_key_file
    tls_min_version trusted_ips trusted_proxy_ips upstream_timeout upstreams
    use_system_trust_store user_id_claim validate_url whitelist_domains"""
OAUTH2_PROXY_OPTIONS = frozenset(_OPTION_NAMES.split())
SECRET_OPTIONS = {
    "client_secret",
    "cookie_secret",
    "basic_auth_password",
    "redis_password",
    "redis_sentinel_password",
    "github_token",
    "jwt_key",
    "signature_key",
}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def _access() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "access.yaml").read_text())


def _values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def _oauth2_proxy_cfg() -> dict[str, Any]:
    return tomllib.loads((DEPLOY / "oauth2-proxy.cfg").read_text())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["ingress.yaml", "oauth2-proxy.yaml", "networkpolicies.yaml"])
def test_the_access_manifests_are_valid_kubernetes(name: str, version: str) -> None:
    docs = _docs(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE


# -- single sign-on --------------------------------------------------------------------------------


def test_every_ui_request_goes_through_the_sso_check_and_only_its_token_is_passed() -> None:
    [ui, sso] = _docs("ingress.yaml")
    [proxy_service] = [d for d in _docs("oauth2-proxy.yaml") if d["kind"] == "Service"]
    port = proxy_service["spec"]["ports"][0]["port"]
    notes = ui["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/auth-url"] == (
        f"http://{proxy_service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"
        "/oauth2/auth"
    )
    assert notes["nginx.ingress.kubernetes.io/auth-signin"].startswith("https://$host/oauth2/start")
    # one header crosses: the ID token the webserver verifies itself; never X-Auth-Request-*
    assert notes["nginx.ingress.kubernetes.io/auth-response-headers"] == "Authorization"
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    hosts = {rule["host"]: rule for rule in ui["spec"]["rules"]}
    assert set(hosts) == {"dagster.twinme.ai", "dagster-view.twinme.ai"}
    assert {h for tls in ui["spec"]["tls"] for h in tls["hosts"]} == set(hosts)
    backends = {
        host: [p["backend"]["service"]["name"] for p in rule["http"]["paths"]]
        for host, rule in hosts.items()
    }
    # the chart's Services: the full webserver and, for viewers, the read-only one
    assert backends == {
        "dagster.twinme.ai": ["dagster-webserver"],
        "dagster-view.twinme.ai": ["dagster-webserver-read-only"],
    }
    assert _values()["dagsterWebserver"]["enableReadOnly"] is True
    # the second Ingress serves oauth2-proxy's own pages only, without the check
    assert "nginx.ingress.kubernetes.io/auth-url" not in sso["metadata"]["annotations"]
    for rule in sso["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["path"] == "/oauth2/"
            assert path["backend"]["service"]["name"] == proxy_service["metadata"]["name"]


def test_oauth2_proxy_uses_real_options_holds_no_secret_and_matches_the_access_policy() -> None:
    cfg = _oauth2_proxy_cfg()
    unknown = set(cfg) - OAUTH2_PROXY_OPTIONS
    assert not unknown, f"not oauth2-proxy options: {sorted(unknown)}"
    assert not set(cfg) & SECRET_OPTIONS, "secrets come from the Secret oauth2-proxy, by env"
    access = _access()
    assert cfg["provider"] == "oidc"
    assert cfg["oidc_issuer_url"] == access["oidc"]["issuer"]
    assert cfg["client_id"] == access["oidc"]["audience"]
    assert cfg["oidc_groups_claim"] == access["oidc"]["groups_claim"]
    assert cfg["oidc_email_claim"] == access["oidc"]["user_claim"]
    granting = sorted(group for groups in access["roles"].values() for group in groups)
    assert sorted(cfg["allowed_groups"]) == granting
    # auth request mode: the proxy answers ingress-nginx, hands it the ID token as a bearer,
    # and never the bare identity headers anybody in the cluster could forge
    assert cfg["upstreams"] == ["static://202"]
    assert cfg["set_authorization_header"] is True
    assert cfg["set_xauthrequest"] is False
    assert cfg["cookie_secure"] is True and cfg["cookie_httponly"] is True
    assert cfg["cookie_name"].startswith("__Host-")
    assert cfg["http_address"].endswith(":4180")
    # the session is refreshed before the provider's ID token (Keycloak: 5 min) expires
    assert cfg["cookie_refresh"] == "4m"


def test_oauth2_proxy_takes_its_secrets_by_reference_and_runs_locked_down() -> None:
    [deployment] = [d for d in _docs("oauth2-proxy.yaml") if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert re.fullmatch(
        r"quay\.io/oauth2-proxy/oauth2-proxy:v7\.\d+\.\d+@sha256:[0-9a-f]{64}", container["image"]
    )
    env = {e["name"]: e for e in container["env"]}
    for name in ("OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_COOKIE_SECRET"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "oauth2-proxy"
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_webservers_enforce_the_policy_in_production() -> None:
    """Both webservers (full and read-only) get TWINME_ENV=production and the policy file:
    twinme-ops-webserver refuses to start open in production (tests/access/test_access_rules.py)."""
    web = _values()["dagsterWebserver"]
    env = {e["name"]: e["value"] for e in web["env"]}
    assert env["TWINME_ENV"] == "production"
    [mount] = [
        m for m in web["volumeMounts"] if env["TWINME_ACCESS_POLICY"].startswith(m["mountPath"])
    ]
    [volume] = [v for v in web["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "twinme-access"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "ln -sf twinme-ops-webserver /usr/local/bin/dagster-webserver" in dockerfile


# -- the network -----------------------------------------------------------------------------------


def _component(module: object) -> str:
    [found] = re.findall(r'component="(\w+)"', inspect.getsource(module))  # type: ignore[arg-type]
    return found


# The pods, by the labels their makers set: the chart (component, deployment), dagster-k8s's
# launcher and executor (read from their source), oauth2-proxy.yaml.
WEBSERVER = Endpoint(NAMESPACE, {"component": "dagster-webserver"}, "10.244.0.10")
READ_ONLY = Endpoint(NAMESPACE, {"component": "dagster-webserver-read-only"}, "10.244.0.11")
DAEMON = Endpoint(NAMESPACE, {"component": "dagster-daemon"}, "10.244.0.12")
CODE_SERVER = Endpoint(
    NAMESPACE, {"component": "user-deployments", "deployment": "twinme-ops"}, "10.244.0.13"
)
RUN = Endpoint(
    NAMESPACE, {"app.kubernetes.io/component": _component(dagster_k8s.launcher)}, "10.244.0.14"
)
STEP = Endpoint(
    NAMESPACE, {"app.kubernetes.io/component": _component(dagster_k8s.executor)}, "10.244.0.15"
)
PROXY = Endpoint(NAMESPACE, {"app.kubernetes.io/name": "oauth2-proxy"}, "10.244.0.16")
OTHER_POD = Endpoint(NAMESPACE, {"app": "debug"}, "10.244.0.17")  # e.g. kubectl run
INGRESS = Endpoint("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "10.244.1.2")
API = Endpoint("twinme-prod", {"app": "twinme-api"}, "10.244.2.3")
BUILD = Endpoint("twinme-build", {"app.kubernetes.io/name": "twinme-app-tests"}, "10.244.3.4")
DNS = Endpoint("kube-system", {"k8s-app": "kube-dns"}, "10.244.4.5")
MONITORING = Endpoint("monitoring", {"app": "pushgateway"}, "10.244.5.6")
IDP = Endpoint(ip="198.51.100.10")  # sso.twinme.ai (networkpolicies.yaml's header)
S3_ENDPOINT = Endpoint(ip="198.51.100.130")
DAGSTER_DB = Endpoint(ip="192.0.2.20")
KUBE_API = Endpoint(ip="192.0.2.10")
PROD_DB = Endpoint(ip="10.0.12.5")  # a VPC database
METADATA = Endpoint(ip="169.254.169.254")
INTERNET = Endpoint(ip="104.16.1.35")
LAPTOP = Endpoint(ip="203.0.113.50")

DAGSTER_PODS = [WEBSERVER, READ_ONLY, DAEMON, CODE_SERVER, RUN, STEP]


def _policies() -> list[dict[str, Any]]:
    return _docs("networkpolicies.yaml")


PATHS = [
    # the UI: ingress-nginx to the webservers and to oauth2-proxy, nothing else of the namespace
    (INGRESS, WEBSERVER, 80, True),
    (INGRESS, READ_ONLY, 80, True),
    (INGRESS, PROXY, 4180, True),
    (INGRESS, CODE_SERVER, 3030, False),
    (INGRESS, DAEMON, 80, False),
    (INGRESS, RUN, 3030, False),
    (LAPTOP, WEBSERVER, 80, False),
    (API, WEBSERVER, 80, False),
    # the code server: from the Dagster pods only
    (WEBSERVER, CODE_SERVER, 3030, True),
    (READ_ONLY, CODE_SERVER, 3030, True),
    (DAEMON, CODE_SERVER, 3030, True),
    (RUN, CODE_SERVER, 3030, True),
    (STEP, CODE_SERVER, 3030, True),
    (PROXY, CODE_SERVER, 3030, False),
    (OTHER_POD, CODE_SERVER, 3030, False),
    (API, CODE_SERVER, 3030, False),
    (BUILD, CODE_SERVER, 3030, False),
    (LAPTOP, CODE_SERVER, 3030, False),
    (WEBSERVER, CODE_SERVER, 4000, False),
    # the daemon and the run pods: nothing comes in
    (WEBSERVER, DAEMON, 3030, False),
    (CODE_SERVER, DAEMON, 3030, False),
    (OTHER_POD, DAEMON, 80, False),
    (WEBSERVER, RUN, 3030, False),
    (API, RUN, 443, False),
    # oauth2-proxy talks to the identity provider only
    (PROXY, IDP, 443, True),
    (PROXY, INTERNET, 443, False),
    (PROXY, WEBSERVER, 80, False),
    # the webservers: Dagster's database, S3 logs, the IdP's keys, the Kubernetes API
    (WEBSERVER, DAGSTER_DB, 5432, True),
    (WEBSERVER, S3_ENDPOINT, 443, True),
    (WEBSERVER, IDP, 443, True),
    (WEBSERVER, KUBE_API, 443, True),
    (WEBSERVER, PROD_DB, 5432, False),
    (WEBSERVER, API, 3000, False),
    (WEBSERVER, METADATA, 443, False),
    (WEBSERVER, METADATA, 80, False),
    (WEBSERVER, INTERNET, 443, False),
    (READ_ONLY, PROD_DB, 5432, False),
    # the daemon: code server, Dagster's database, the Kubernetes API
    (DAEMON, DAGSTER_DB, 5432, True),
    (DAEMON, KUBE_API, 6443, True),
    (DAEMON, PROD_DB, 5432, False),
    (DAEMON, INTERNET, 443, False),
    # the code server's sensors: Slack, S3, the Git host over public HTTPS; no private range
    (CODE_SERVER, INTERNET, 443, True),
    (CODE_SERVER, METADATA, 443, False),
    (CODE_SERVER, PROD_DB, 5432, False),
    (CODE_SERVER, API, 3000, False),
    # runs: the databases, Redis, HTTPS, the Pushgateway; never the cloud's metadata
    (RUN, PROD_DB, 5432, True),
    (RUN, Endpoint(ip="10.0.12.6"), 6379, True),
    (RUN, INTERNET, 443, True),
    (RUN, KUBE_API, 443, True),
    (RUN, MONITORING, 9091, True),
    (STEP, PROD_DB, 5432, True),
    (RUN, METADATA, 443, False),
    (RUN, METADATA, 80, False),
    (RUN, INTERNET, 22, False),
    (STEP, METADATA, 443, False),
    # a pod nobody declared: DNS and nothing else
    (OTHER_POD, INTERNET, 443, False),
    (OTHER_POD, PROD_DB, 5432, False),
    (OTHER_POD, WEBSERVER, 80, False),
]


@each_path(PATHS)
def test_each_network_path_is_allowed_or_denied(
    src: Endpoint, dst: Endpoint, port: int, expected: bool
) -> None:
    assert allowed(_policies(), src, dst, port) is expected


@pytest.mark.parametrize("pod", [*DAGSTER_PODS, PROXY, OTHER_POD], ids=lambda e: str(e.labels))
def test_every_pod_resolves_names(pod: Endpoint) -> None:
    assert allowed(_policies(), pod, DNS, 53, "UDP")
    assert allowed(_policies(), pod, DNS, 53, "TCP")


def test_the_namespace_denies_by_default() -> None:
    policies = _policies()
    [deny] = [p for p in policies if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"]["podSelector"] == {}
    assert sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    # without it, an undeclared pod would take connections from anywhere
    others = [p for p in policies if p is not deny]
    assert allowed(others, LAPTOP, OTHER_POD, 8080)
    assert not allowed(policies, LAPTOP, OTHER_POD, 8080)


def test_only_dagster_pods_of_the_namespace_can_reach_the_code_server_and_the_daemon() -> None:
    """Structurally, whatever labels other pods have: every ingress peer of a policy selecting
    the code server is a pod of this namespace that is a Dagster pod; none selects the daemon."""
    for target in (CODE_SERVER, DAEMON):
        for policy in _policies():
            if not selects(policy["spec"]["podSelector"], target.labels):
                continue
            for rule in policy["spec"].get("ingress") or []:
                assert rule.get("from"), f"{policy['metadata']['name']}: open to every peer"
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"}, (policy["metadata"]["name"], peer)
                    assert target is CODE_SERVER, "nothing may connect to the daemon"
    peers = [
        pod
        for pod in (*DAGSTER_PODS, PROXY, OTHER_POD)
        if allowed(_policies(), pod, CODE_SERVER, 3030)
    ]
    assert peers == [WEBSERVER, READ_ONLY, DAEMON, RUN, STEP]


def test_a_run_cannot_take_a_dagster_pods_labels() -> None:
    """The labels that open the code server are the launcher's: a run's dagster-k8s/config tag
    may set container resources only (only_allow_user_defined_k8s_config_fields)."""
    launcher = _values()["runLauncher"]["config"]["customRunLauncher"]["config"]
    allowed_fields = launcher["only_allow_user_defined_k8s_config_fields"]
    assert set(allowed_fields) == {"container_config"}
    assert set(allowed_fields["container_config"]) == {"resources"}


# -- least privilege -------------------------------------------------------------------------------

# Each of these would let a run (or whoever controls one) read production's secrets, run code in
# another pod, act as another identity or widen its own rights.
FORBIDDEN = [
    ("", "secrets", verb) for verb in ("get", "list", "watch", "create", "update", "patch")
] + [
    ("", "pods/exec", "create"),
    ("", "pods/attach", "create"),
    ("", "pods/portforward", "create"),
    ("", "pods/ephemeralcontainers", "patch"),
    ("", "serviceaccounts/token", "create"),
    ("", "serviceaccounts", "impersonate"),
    ("", "users", "impersonate"),
    ("", "groups", "impersonate"),
    ("rbac.authorization.k8s.io", "roles", "escalate"),
    ("rbac.authorization.k8s.io", "roles", "bind"),
    ("rbac.authorization.k8s.io", "roles", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ("", "nodes/proxy", "get"),
    ("", "persistentvolumes", "create"),
    ("certificates.k8s.io", "certificatesigningrequests", "create"),
]


# The one exception, named: jwt_key_rotation_job reads and rewrites the API's JWT key Secret
# (docs/jwt-rotation.md). Only that Secret (resourceNames), only get and patch.
JWT_KEYS_SECRET = "twinme-jwt-keys"


def _rules() -> list[dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d is not None]
    return [rule for doc in docs if doc["kind"] in ("Role", "ClusterRole") for rule in doc["rules"]]


def _named_jwt_secret_rule(rule: dict) -> bool:
    return rule["resources"] == ["secrets"] and rule.get("resourceNames") == [JWT_KEYS_SECRET]


def _granted_anywhere() -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) granted, but for the JWT key Secret's named rule."""
    return {
        (group, resource, verb)
        for rule in _rules()
        if not _named_jwt_secret_rule(rule)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("permission", FORBIDDEN, ids=lambda p: f"{p[1]}:{p[2]}")
def test_the_runs_account_is_never_granted(permission: tuple[str, str, str]) -> None:
    assert permission not in _granted_anywhere()


def test_the_forbidden_check_sees_a_grant() -> None:
    granted = _granted_anywhere()
    assert ("batch", "jobs", "create") in granted, "the parse found the Roles"
    assert not any(resource == "secrets" for _, resource, _ in granted)


def test_the_only_secret_a_run_may_touch_is_the_jwt_keys_one_by_name() -> None:
    """No list/watch/create/update on secrets, and no unnamed rule: a run can read or patch the
    JWT key Secret and no other (a rule without resourceNames would be every Secret)."""
    secret_rules = [r for r in _rules() if "secrets" in r["resources"] or "*" in r["resources"]]
    assert secret_rules, "jwt_key_rotation_job needs its Secret: the rule is gone"
    for rule in secret_rules:
        assert _named_jwt_secret_rule(rule), rule
        assert sorted(rule["verbs"]) == ["get", "patch"], rule
        assert rule["apiGroups"] == [""], rule


# -- supply chain ----------------------------------------------------------------------------------


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of deploy/dagster/requirements.lock."""
    text = (DEPLOY / "requirements.lock").read_text()
    logical = re.sub(r"\\\n\s*", " ", text)
    out: dict[str, tuple[str, list[str]]] = {}
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[a-z,]+\])?==([^\s;]+)", requirement.strip())
        assert match, f"not pinned with ==: {requirement}"
        hashes = [o.strip() for o in options]
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), line
        out[match.group(1).lower().replace("_", "-").replace(".", "-")] = (match.group(3), hashes)
    return out


def test_the_lock_pins_and_hashes_every_dependency_of_the_project() -> None:
    lock = _lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["deploy"]]
    for requirement in wanted:
        key = requirement.name.lower().replace("_", "-").replace(".", "-")
        assert key in lock, f"{requirement.name} is not in requirements.lock: regenerate it"
        version = lock[key][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement}: the lock has {version}; regenerate it (its header says how)"
        )
    # the instance storage, on the chart's release train, and the project's build backend
    assert lock["dagster-postgres"][0] == dagster_k8s.__version__
    assert "setuptools" in lock
    # pip's --require-hashes mode wants the extra another package asks for on the pinned line
    assert "gql[requests]==" in (DEPLOY / "requirements.lock").read_text()


def test_the_lock_check_refuses_an_unpinned_line(tmp_path: Path, monkeypatch: Any) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("requests>=2 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    monkeypatch.setattr(f"{__name__}.DEPLOY", tmp_path)
    with pytest.raises(AssertionError, match="not pinned"):
        _lock()


@pytest.mark.parametrize(
    "path",
    ["deploy/dagster/Dockerfile", "deploy/app/Dockerfile.production"],
)
def test_every_base_image_is_pinned_by_digest(path: str) -> None:
    text = (REPO / path).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    bases = [args.get(b.strip("${}"), b) for b in re.findall(r"^FROM (\S+)", text, re.M)]
    stages = set(re.findall(r"^FROM \S+ AS (\w+)", text, re.M))
    external = [b for b in bases if b not in stages]
    assert external
    for base in external:
        assert re.search(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$", base), f"{path}: {base}"
    # the application template twinme_ops ships is the same file
    if path.endswith("Dockerfile.production"):
        shipped = REPO / "twinme_ops" / "common" / "templates" / "Dockerfile.production"
        assert shipped.read_text() == text
