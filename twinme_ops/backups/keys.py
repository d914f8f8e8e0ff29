"""Which keys encrypt new artifacts and which decrypt stored ones.

Writing: age when recipients are configured (``TWINME_BACKUP_AGE_RECIPIENTS``), even if the
AES-256-GCM key is also set; else AES-256-GCM when ``TWINME_BACKUP_ENCRYPTION_KEY`` is set; else
no client-side encryption. Reading follows each artifact's manifest entry: ``age`` needs an
identity matching one of its recipients, ``AES-256-GCM`` the key whose id it records, so sets
written before a switch to age stay readable as long as the AES key stays configured where
restores run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyrage

from twinme_ops.backups.age_crypto import (
    IDENTITY_ENV,
    IDENTITY_FILE_ENV,
    RECIPIENTS_ENV,
    public_key,
)
from twinme_ops.backups.crypto import KEY_ENV, key_id

AGE = "age"
AES = "AES-256-GCM"


@dataclass(frozen=True, repr=False)
class BackupKeys:
    """The configured backup keys. Its ``repr`` names the schemes, never a key."""

    aes_key: bytes | None = None
    age_recipients: tuple[str, ...] = ()
    age_identities: tuple[pyrage.x25519.Identity, ...] = ()

    def __repr__(self) -> str:
        return (
            f"BackupKeys(aes={'set' if self.aes_key else 'unset'}, "
            f"age_recipients={len(self.age_recipients)}, "
            f"age_identities={len(self.age_identities)})"
        )

    @property
    def write_scheme(self) -> str | None:
        """What new artifacts are encrypted with: ``age``, ``AES-256-GCM`` or None."""
        if self.age_recipients:
            return AGE
        return AES if self.aes_key is not None else None

    @property
    def name_suffix(self) -> str:
        """What a new artifact's name ends with after its format: ``.age``, ``.enc`` or ``""``."""
        return {AGE: ".age", AES: ".enc", None: ""}[self.write_scheme]

    def identity_keys(self) -> list[str]:
        """The public keys of the configured identities (not secret)."""
        return [public_key(i) for i in self.age_identities]


def as_keys(key: bytes | BackupKeys | None) -> BackupKeys:
    """``key`` as :class:`BackupKeys`: raw bytes are an AES-256-GCM key (the older API)."""
    if isinstance(key, BackupKeys):
        return key
    return BackupKeys(aes_key=bytes(key) if key is not None else None)


def scheme_of(encryption: Mapping[str, Any] | bool | None) -> str | None:
    """The scheme of a manifest entry's ``encryption`` (``True``: AES-256-GCM, the older API)."""
    if not encryption:
        return None
    if encryption is True:
        return AES
    assert isinstance(encryption, Mapping)
    return AGE if encryption.get("algorithm") == AGE else AES


def require_readable(
    set_id: str, name: str, encryption: Mapping[str, Any] | bool | None, keys: BackupKeys
) -> None:
    """Raise ``ValueError`` (what is missing, and the fix) unless ``keys`` can decrypt an
    artifact whose manifest entry says ``encryption``; checked before any byte is read."""
    scheme = scheme_of(encryption)
    if scheme == AES and keys.aes_key is None:
        raise ValueError(
            f"{set_id}/{name} is encrypted with AES-256-GCM: set {KEY_ENV} to the key that wrote "
            "it where restores run (keep it configured while sets written with it are kept)"
        )
    if scheme == AES and isinstance(encryption, Mapping) and keys.aes_key is not None:
        wanted = encryption.get("key_id")
        if wanted and wanted != key_id(keys.aes_key):
            raise ValueError(
                f"decryption failed: wrong {KEY_ENV} for {set_id}/{name}: it was encrypted with "
                f"the AES-256-GCM key of id {wanted}, {KEY_ENV} holds the key of id "
                f"{key_id(keys.aes_key)}. Fix: set {KEY_ENV} to the key that wrote it"
            )
    if scheme != AGE:
        return
    assert isinstance(encryption, Mapping)
    needed = [str(r) for r in encryption.get("recipients", [])]
    listed = ", ".join(needed) or "(not recorded)"
    if not keys.age_identities:
        raise ValueError(
            f"{set_id}/{name} is encrypted with age to recipient(s) {listed}, and no age identity "
            f"is configured. Fix: set {IDENTITY_FILE_ENV} to the identity file whose public key "
            f"(age-keygen -y FILE) is listed (or {IDENTITY_ENV} to its contents) where restores "
            "run; the set itself is intact"
        )
    have = keys.identity_keys()
    if needed and not set(needed) & set(have):
        raise ValueError(
            f"{set_id}/{name} is encrypted with age to recipient(s) {listed}; the configured "
            f"identity is for {', '.join(have)}. Fix: configure the identity of one of the listed "
            f"recipients ({IDENTITY_FILE_ENV}; age-keygen -y FILE prints its public key); the set "
            "itself is intact"
        )


__all__ = ["AES", "AGE", "RECIPIENTS_ENV", "BackupKeys", "as_keys", "require_readable"]
