"""JWT signing keys and the key set the API is given, as they are stored in its Secret.

A key is an ES256 (P-256) key pair made with ``cryptography``; its ``kid`` is the creation date
plus the start of its RFC 7638 thumbprint, readable and unique. The key set has one *current*
key (the API signs with it) and the keys retired by earlier rotations, which the API still
accepts until their ``expires_at`` (the overlap window), so tokens issued just before a
rotation stay valid.

In the Secret (:func:`secret_content`):

- ``jwks.json``: every key's *public* JWK (RFC 7517), current first: what the API verifies with;
- ``signing-key.pem`` and ``signing-kid``: the current key's private key and its ``kid``;
- annotations ``twinme.ai/jwt-current-kid`` and ``twinme.ai/jwt-keys`` (each key's ``kid``,
  ``created`` and ``expires``, ISO 8601 UTC): the dates people and the expiry schedule read.

A retired key's private half is dropped at rotation: nothing signs with it any more.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography is imported where keys are made, not when the code loads
    from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"
JWKS_KEY = "jwks.json"
SIGNING_KEY = "signing-key.pem"
SIGNING_KID = "signing-kid"
CURRENT_KID_ANNOTATION = "twinme.ai/jwt-current-kid"
KEYS_ANNOTATION = "twinme.ai/jwt-keys"
ROTATED_AT_ANNOTATION = "twinme.ai/jwt-rotated-at"


class KeySetError(ValueError):
    """The Secret's content is not a key set this tool wrote; the message names the fix."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def iso(moment: datetime) -> str:
    """``2026-12-06T02:30:00Z``: how dates are written in annotations and metadata."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """The inverse of :func:`iso`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def public_jwk(public_key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, str]:
    """The public JWK of a P-256 key, with its ``kid``, ``alg`` and ``use``."""
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": ALGORITHM,
        "use": "sig",
    }


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an EC JWK."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class SigningKey:
    """One key of the set. ``private_pem`` is kept for the current key only."""

    kid: str
    created_at: datetime
    jwk: dict[str, str] = field(repr=False)
    expires_at: datetime | None = None  # None: the current key, no end yet
    private_pem: bytes | None = field(default=None, repr=False)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The private key (current key only)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if self.private_pem is None:
            raise KeySetError(f"key {self.kid} has no private half (it was retired)")
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeySetError(f"key {self.kid} is not an EC key")
        return key

    def dates(self) -> dict[str, str]:
        """``kid``, ``created`` and ``expires`` as recorded in the annotation and metadata."""
        out = {"kid": self.kid, "created": iso(self.created_at)}
        if self.expires_at is not None:
            out["expires"] = iso(self.expires_at)
        return out


def new_key(now: datetime) -> SigningKey:
    """A fresh P-256 key, current, created ``now``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(private.public_key(), "")
    kid = f"twinme-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{thumbprint(jwk)[:8]}"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(kid, now, {**jwk, "kid": kid}, None, pem)


@dataclass(frozen=True)
class KeySet:
    """The current key (None before the first rotation) and the retired keys still accepted."""

    current: SigningKey | None
    retired: tuple[SigningKey, ...] = ()

    @property
    def keys(self) -> list[SigningKey]:
        """Every key, current first."""
        return ([self.current] if self.current else []) + list(self.retired)

    def kids(self) -> list[str]:
        """Every ``kid``, current first."""
        return [k.kid for k in self.keys]

    def expired(self, now: datetime) -> list[SigningKey]:
        """Retired keys whose overlap has passed."""
        return [k for k in self.retired if k.expires_at is not None and k.expires_at <= now]

    def rotated(self, new: SigningKey, now: datetime, overlap: timedelta) -> KeySet:
        """``new`` becomes current; the old current key is accepted until ``now + overlap``;
        retired keys already past their overlap are dropped."""
        kept = [k for k in self.retired if k not in self.expired(now)]
        if self.current is not None:
            old = replace(self.current, expires_at=now + overlap, private_pem=None)
            kept.insert(0, old)
        return KeySet(new, tuple(kept))

    def pruned(self, now: datetime) -> KeySet:
        """The set without its expired keys."""
        expired = self.expired(now)
        return KeySet(self.current, tuple(k for k in self.retired if k not in expired))


def secret_content(keyset: KeySet, now: datetime) -> tuple[dict[str, str], dict[str, str]]:
    """The Secret's ``data`` (base64 values) and annotations for ``keyset``."""
    if keyset.current is None or keyset.current.private_pem is None:
        raise KeySetError("a key set to store needs a current key with its private half")
    jwks = {"keys": [k.jwk for k in keyset.keys]}
    plain = {
        JWKS_KEY: json.dumps(jwks, indent=1).encode(),
        SIGNING_KEY: keyset.current.private_pem,
        SIGNING_KID: keyset.current.kid.encode(),
    }
    data = {k: base64.b64encode(v).decode() for k, v in plain.items()}
    annotations = {
        CURRENT_KID_ANNOTATION: keyset.current.kid,
        KEYS_ANNOTATION: json.dumps([k.dates() for k in keyset.keys], separators=(",", ":")),
        ROTATED_AT_ANNOTATION: iso(now),
    }
    return data, annotations


def _decode(data: dict[str, str], key: str, secret: str) -> bytes:
    try:
        return base64.b64decode(data[key], validate=True)
    except (KeyError, ValueError):
        raise KeySetError(
            f"Secret {secret} has no valid {key!r}. Fix: restore the Secret from its last "
            "good version, or empty its data (kubectl patch secret ... -p '{\"data\":null}') "
            "and run jwt_key_rotation_job to start a new key set."
        ) from None


def keyset_from_secret(
    data: dict[str, str] | None, annotations: dict[str, str] | None, secret: str
) -> KeySet:
    """The key set stored by :func:`secret_content` (an empty Secret: no key yet)."""
    data = data or {}
    annotations = annotations or {}
    if not data:
        return KeySet(None)
    try:
        jwks: Any = json.loads(_decode(data, JWKS_KEY, secret))
        dates = {d["kid"]: d for d in json.loads(annotations.get(KEYS_ANNOTATION, "[]"))}
        by_kid = {str(k["kid"]): {str(a): str(b) for a, b in k.items()} for k in jwks["keys"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise KeySetError(
            f"Secret {secret}'s {JWKS_KEY} or {KEYS_ANNOTATION} annotation is not a key set "
            f"({type(exc).__name__}). Fix: restore the Secret from its last good version, or "
            "empty its data and run jwt_key_rotation_job to start a new key set."
        ) from None
    current_kid = _decode(data, SIGNING_KID, secret).decode().strip()
    if current_kid not in by_kid:
        raise KeySetError(
            f"Secret {secret}: the signing key {current_kid!r} is not in {JWKS_KEY}. Fix: "
            "restore the Secret from its last good version, or run jwt_key_rotation_job."
        )
    pem = _decode(data, SIGNING_KEY, secret)
    keys: list[SigningKey] = []
    for kid, jwk in by_kid.items():
        recorded = dates.get(kid, {})
        created = parse_iso(recorded["created"]) if "created" in recorded else None
        expires = parse_iso(recorded["expires"]) if "expires" in recorded else None
        if kid != current_kid and expires is None:
            # a retired key without a recorded end: treat its overlap as over, so it is pruned
            expires = datetime.min.replace(tzinfo=UTC)
        keys.append(
            SigningKey(
                kid,
                created or datetime.min.replace(tzinfo=UTC),
                jwk,
                None if kid == current_kid else expires,
                pem if kid == current_kid else None,
            )
        )
    current = next(k for k in keys if k.kid == current_kid)
    return KeySet(current, tuple(k for k in keys if k.kid != current_kid))
