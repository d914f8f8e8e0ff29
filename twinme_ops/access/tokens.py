"""Who is asking: the identity provider's signed ID token, verified on every request.

oauth2-proxy (deploy/dagster/oauth2-proxy.cfg) passes the ID token upstream as
``Authorization: Bearer <JWT>``. The webserver does not trust the proxy for it: it checks the
signature against the identity provider's JWKS, the issuer, the audience and the expiry, with
PyJWT (``jwt.PyJWKClient`` caches the keys and refetches on an unknown ``kid``, which is how a
key rotation at the provider arrives). A header anybody inside the cluster could write
(``X-Forwarded-User``, ``X-Auth-Request-Email``) is never believed.
"""

from __future__ import annotations

import jwt

from twinme_ops.access.policy import AccessPolicy, Identity


class Unauthenticated(Exception):
    """The request carries no verifiable identity; the message says why (no token content)."""


class TokenVerifier:
    """Verifies bearer tokens against the policy's OIDC settings."""

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        self._jwks = jwt.PyJWKClient(policy.oidc.jwks_url, cache_keys=True, lifespan=300)

    def identity(self, authorization: str | None) -> Identity:
        """The person behind an ``Authorization`` header value, or :class:`Unauthenticated`."""
        if not authorization:
            raise Unauthenticated(
                "no bearer token: sign in through the single sign-on proxy (oauth2-proxy)"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header is not 'Bearer <ID token>'")
        oidc = self.policy.oidc
        try:
            key = self._jwks.get_signing_key_from_jwt(token.strip())
            claims = jwt.decode(
                token.strip(),
                key.key,
                algorithms=oidc.algorithms,
                audience=oidc.audience,
                issuer=oidc.issuer,
                leeway=oidc.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the ID token has expired: sign in again") from None
        except jwt.PyJWKClientConnectionError:
            raise Unauthenticated(
                "the identity provider's keys (JWKS) could not be fetched: the token cannot be "
                "verified"
            ) from None
        except jwt.PyJWKClientError:
            raise Unauthenticated(
                "the ID token is signed by a key the identity provider does not publish"
            ) from None
        except jwt.InvalidTokenError as exc:
            # PyJWT's messages name the failed check (signature, audience, issuer), never the
            # token's content
            raise Unauthenticated(f"the ID token is not valid: {exc}") from None
        user = claims.get(oidc.user_claim) or claims.get("sub")
        if not isinstance(user, str) or not user:
            raise Unauthenticated(f"the ID token names nobody (no {oidc.user_claim} or sub claim)")
        raw_groups = claims.get(oidc.groups_claim, [])
        groups = (
            tuple(g for g in raw_groups if isinstance(g, str))
            if isinstance(raw_groups, list)
            else ()
        )
        return Identity(user=user, groups=groups, roles=self.policy.roles_of(groups))
