"""The JWT key rotation's settings: which Secret, how long a retired key stays accepted
(``TWINME_JWT_OVERLAP_HOURS``), and how the running API is asked."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from twinme_ops.common.redact import redact
from twinme_ops.release.jwt.check import TokenCheck

OVERLAP_ENV = "TWINME_JWT_OVERLAP_HOURS"
DEFAULT_OVERLAP_HOURS = 48


def overlap_hours_from_env() -> int:
    """``TWINME_JWT_OVERLAP_HOURS`` (default 48); a bad value refuses to load, with the fix."""
    raw = os.environ.get(OVERLAP_ENV, "").strip()
    if not raw:
        return DEFAULT_OVERLAP_HOURS
    try:
        hours = int(raw)
    except ValueError:
        hours = -1
    if hours < 1:
        raise ValueError(
            redact(
                f"{OVERLAP_ENV}={raw!r} is not a whole number of hours >= 1. Fix: e.g. 48 (at "
                "least the API's longest token lifetime, so no valid token is cut short)."
            )
        )
    return hours


class JwtKeysResource(dg.ConfigurableResource):
    """The API's JWT signing keys: the Secret holding them and how a rotation is verified."""

    secret_name: str = Field(
        default="twinme-jwt-keys",
        description="Secret (in the API Deployment's namespace) holding the key set.",
    )
    overlap_hours: int = Field(
        default=DEFAULT_OVERLAP_HOURS,
        description="Hours a replaced key is still accepted (TWINME_JWT_OVERLAP_HOURS).",
    )
    api_url: str = Field(
        default="",
        description="API base URL the tokens are checked against. Empty: the "
        "release settings' (TWINME_API_URL).",
    )
    check_path: str = Field(default="/auth/check", description="Path that verifies a token.")
    check_attempts: int = Field(
        default=10, description="Attempts before a token check fails (old pods may still answer)."
    )
    check_delay_s: float = Field(default=1.0, description="Delay between two check attempts.")

    def token_check(self, fallback_url: str) -> TokenCheck:
        """How the running API is asked; refuses without a URL, naming the fix."""
        url = self.api_url or fallback_url
        if not url:
            raise ValueError(
                "No API URL to verify the JWT keys against. Fix: set TWINME_API_URL (or the "
                "jwt_keys resource's api_url) to the API's base URL."
            )
        return TokenCheck(
            url, self.check_path, attempts=self.check_attempts, delay_s=self.check_delay_s
        )
