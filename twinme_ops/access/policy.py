"""The access policy: roles, the groups that grant them, and what each role may do.

One declared place (``deploy/dagster/access.yaml`` in production, mounted from a ConfigMap and
named by ``TWINME_ACCESS_POLICY``) maps the identity provider's groups to three roles. What a
role may do is fixed here, in code, so that a policy file can grant a role but never invent a
new power:

- ``viewer`` sees everything and changes nothing;
- ``operator`` launches, re-executes and terminates runs (backups, drills, tuning, releases,
  rollbacks, recoveries), and turns schedules and sensors on and off;
- ``recovery_approver`` approves a ``recover_job`` launched by somebody else.

Some actions are allowed to nobody through the UI (deleting runs erases the audit trail,
reporting a materialization would forge a backup or a drill result): they stay possible from
the command line of a pod, where Kubernetes RBAC decides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from twinme_ops.common.redact import redact

Role = Literal["viewer", "operator", "recovery_approver"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "recovery_approver")

# what each role may do (the action names are mutations.py's)
ROLE_ACTIONS: dict[Role, frozenset[str]] = {
    "viewer": frozenset({"view", "ui_state"}),
    "operator": frozenset(
        {"view", "ui_state", "launch", "terminate", "toggle", "reload", "dry_run"}
    ),
    "recovery_approver": frozenset({"view", "ui_state", "approve"}),
}

POLICY_ENV = "TWINME_ACCESS_POLICY"


class PolicyError(ValueError):
    """The access policy file is missing or wrong: names the file, the problem and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OidcSettings(_Strict):
    """How to verify the identity provider's ID tokens (what oauth2-proxy passes upstream)."""

    issuer: str = Field(description="The token's iss, e.g. https://sso.twinme.ai/realms/twinme.")
    audience: str = Field(description="The token's aud: oauth2-proxy's client id.")
    jwks_url: str = Field(description="The identity provider's JWKS document (its signing keys).")
    algorithms: list[str] = Field(default=["RS256"], description="Accepted signature algorithms.")
    user_claim: str = Field(default="email", description="The claim that names the person.")
    groups_claim: str = Field(default="groups", description="The claim that lists their groups.")
    leeway_s: int = Field(default=30, ge=0, le=300, description="Clock skew tolerated on exp.")


class ApprovalSettings(_Strict):
    """The two-person rule of recover_job."""

    valid_for_minutes: float = Field(
        default=15, gt=0, le=240, description="An approval must be used within this time."
    )


class AccessPolicy(_Strict):
    """The whole policy file (deploy/dagster/access.yaml)."""

    oidc: OidcSettings
    roles: dict[Role, list[str]] = Field(description="Role -> the groups that grant it.")
    approvals: ApprovalSettings = ApprovalSettings()
    trusted_proxies: list[str] = Field(
        default=["127.0.0.1/32"],
        description="Peers whose X-Forwarded-For is believed (ingress-nginx, oauth2-proxy).",
    )
    audit_log: str = Field(
        default="",
        description="Append-only JSON-lines file of audit records; they also go to stdout.",
    )
    public_url: str = Field(default="", description="The webserver's URL, for approval links.")

    def roles_of(self, groups: list[str] | tuple[str, ...]) -> tuple[Role, ...]:
        """The roles a person with ``groups`` holds (in ROLES order)."""
        held = set(groups)
        return tuple(r for r in ROLES if held & set(self.roles.get(r, [])))


def load_policy(path: str | Path) -> AccessPolicy:
    """Read and validate the policy file; every problem is a :class:`PolicyError` with the fix."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise PolicyError(
            f"access policy {file} does not exist. Fix: point {POLICY_ENV} at the policy file "
            "(deploy/dagster/access.yaml, mounted from the ConfigMap twinme-access)."
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyError(redact(f"access policy {file} is not valid YAML: {exc}")) from None
    try:
        policy = AccessPolicy.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise PolicyError(
            redact(
                f"access policy {file} is wrong: {problems}. Fix: compare it with "
                "deploy/dagster/access.yaml."
            )
        ) from None
    if not any(policy.roles.get(r) for r in ROLES):
        raise PolicyError(f"access policy {file} grants no role to any group: nobody could act.")
    return policy


def configured_policy() -> AccessPolicy | None:
    """The policy named by ``TWINME_ACCESS_POLICY``, or None when access control is off."""
    path = os.environ.get(POLICY_ENV, "").strip()
    return load_policy(path) if path else None


@dataclass(frozen=True)
class Identity:
    """A verified person: who, their groups, and the roles those grant."""

    user: str
    groups: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def may(self, action: str) -> bool:
        """Whether any of this person's roles allows ``action``."""
        return any(action in ROLE_ACTIONS[r] for r in self.roles)

    def role_names(self) -> str:
        """``operator,recovery_approver``, or ``none``."""
        return ",".join(self.roles) or "none"
