"""An identity provider on 127.0.0.1 for the access-control tests: a signing key, its JWKS
served over HTTP, and ID tokens signed like an OIDC provider's (PyJWT).

``IdentityProvider.token(user, groups)`` is what oauth2-proxy would pass upstream as
``Authorization: Bearer``. ``other_key`` signs tokens the provider never published.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from twinme_ops.scratch.local import LOCALHOST

AUDIENCE = "twinme-ops"
GROUPS = {
    "viewer": ["twinme-ops-viewers"],
    "operator": ["twinme-ops-operators"],
    "recovery_approver": ["twinme-ops-recovery-approvers"],
}


class IdentityProvider:
    """A JWKS endpoint on a free port and the keys to sign tokens with."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks = {"keys": [{**public, "kid": "idp-key-1", "use": "sig", "alg": "RS256"}]}
        body = json.dumps(jwks).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self.send_response(200 if self.path == "/certs" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.issuer = f"http://{LOCALHOST}:{self.port}/realms/twinme"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def jwks_url(self) -> str:
        """Where the provider publishes its keys."""
        return f"http://{LOCALHOST}:{self.port}/certs"

    def token(
        self,
        user: str,
        groups: list[str],
        *,
        expires_in: int = 600,
        key: Any = None,
        kid: str = "idp-key-1",
        audience: str = AUDIENCE,
    ) -> str:
        """A signed ID token for ``user`` (the provider's key unless ``key`` is given)."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": f"sub-{user}",
            "email": user,
            "groups": groups,
            "iat": now - 5,
            "exp": now + expires_in,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid})

    def bearer(self, user: str, role: str) -> dict[str, str]:
        """The Authorization header of a person holding ``role``."""
        return {"Authorization": f"Bearer {self.token(user, GROUPS[role])}"}

    def write_policy(self, path: Path, audit_log: Path, public_url: str = "") -> Path:
        """A policy like deploy/dagster/access.yaml, pointing at this provider."""
        policy = yaml.safe_load(
            (Path(__file__).resolve().parents[2] / "deploy/dagster/access.yaml").read_text()
        )
        policy["oidc"].update(issuer=self.issuer, jwks_url=self.jwks_url, audience=AUDIENCE)
        policy["audit_log"] = str(audit_log)
        policy["trusted_proxies"] = ["127.0.0.1/32"]
        policy["public_url"] = public_url
        path.write_text(yaml.safe_dump(policy))
        return path

    def close(self) -> None:
        """Stop serving the JWKS."""
        self.server.shutdown()
        self.server.server_close()
