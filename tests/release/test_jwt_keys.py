"""JWT key sets as stored in the Secret, the overlap setting, and the errors an operator reads."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.jwt_api import SECRET, core_api, declare_secrets
from tests.support.k8s_emulator import NAMESPACE, EmulatorHandle
from twinme_ops.defs.release.jwt_resources import JwtKeysResource, overlap_hours_from_env
from twinme_ops.release.jwt.keys import (
    KEYS_ANNOTATION,
    KeySet,
    KeySetError,
    keyset_from_secret,
    new_key,
    secret_content,
)
from twinme_ops.release.jwt.secret import JwtSecret, JwtSecretError

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OVERLAP = timedelta(hours=48)


def test_a_rotated_set_survives_the_secret_and_keeps_no_retired_private_key() -> None:
    first = KeySet(None).rotated(new_key(T0), T0, OVERLAP)
    later = T0 + timedelta(days=30)
    second = first.rotated(new_key(later), later, OVERLAP)
    data, annotations = secret_content(second, later)
    back = keyset_from_secret(data, annotations, SECRET)
    assert back.kids() == second.kids() and len(back.kids()) == 2
    assert back.current is not None and back.current.private_pem == second.current.private_pem  # type: ignore[union-attr]
    (retired,) = back.retired
    assert retired.private_pem is None and retired.expires_at == later + OVERLAP
    jwks = json.loads(base64.b64decode(data["jwks.json"]))
    assert all("d" not in k for k in jwks["keys"])  # public halves only
    # annotations carry dates, never key material
    assert "PRIVATE" not in json.dumps(annotations) and '"d"' not in json.dumps(annotations)
    assert json.loads(annotations[KEYS_ANNOTATION])[1]["expires"] == "2027-01-02T09:00:00Z"
    # past the overlap the retired key is expired, and a later rotation drops it too
    assert back.expired(later + OVERLAP) == [retired] and back.expired(later) == []
    assert back.pruned(later + OVERLAP).kids() == [second.kids()[0]]


def test_a_secret_that_is_not_a_key_set_is_refused_with_the_fix() -> None:
    data, annotations = secret_content(KeySet(None).rotated(new_key(T0), T0, OVERLAP), T0)
    broken = {**data, "jwks.json": base64.b64encode(b"{not json").decode()}
    with pytest.raises(KeySetError, match="Fix: restore the Secret"):
        keyset_from_secret(broken, annotations, SECRET)
    with pytest.raises(KeySetError, match="signing-key.pem.*Fix"):
        keyset_from_secret({k: v for k, v in data.items() if k != "signing-key.pem"}, {}, SECRET)
    assert keyset_from_secret({}, {}, SECRET).current is None  # as deploy/app ships it


@pytest.mark.parametrize("raw", ["0", "two days", "-5", "1.5"])
def test_a_bad_overlap_refuses_to_load(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("TWINME_JWT_OVERLAP_HOURS", raw)
    with pytest.raises(ValueError, match=r"TWINME_JWT_OVERLAP_HOURS=.*Fix: e\.g\. 48"):
        overlap_hours_from_env()


def test_the_overlap_defaults_to_48_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWINME_JWT_OVERLAP_HOURS", raising=False)
    assert overlap_hours_from_env() == 48
    monkeypatch.setenv("TWINME_JWT_OVERLAP_HOURS", "72")
    assert overlap_hours_from_env() == 72


def test_no_api_url_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="Fix: set TWINME_API_URL"):
        JwtKeysResource().token_check("")


def test_a_missing_secret_names_the_manifest_that_creates_it(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    kubeconfig, handle = k8s_emulator
    declare_secrets(handle)
    secret = JwtSecret(NAMESPACE, SECRET, str(kubeconfig))
    with pytest.raises(JwtSecretError) as info:
        secret.read()
    message = str(info.value)
    assert "secret twinme-prod/twinme-jwt-keys" in message and "HTTP 404" in message
    assert "kubectl create -f deploy/app/templates/jwt-keys-secret.yaml" in message
    assert "kmock-dummy-token" not in message


def test_a_secret_changed_since_it_was_read_is_not_overwritten(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    kubeconfig, handle = k8s_emulator
    declare_secrets(handle)
    core = core_api(kubeconfig)
    core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": SECRET}, "type": "Opaque"})
    secret = JwtSecret(NAMESPACE, SECRET, str(kubeconfig))
    before = secret.read()
    assert before.resource_version
    # someone else edits the Secret between the rotation's read and its write
    core.patch_namespaced_secret(SECRET, NAMESPACE, {"data": {"other": "eA=="}})
    data, annotations = secret_content(KeySet(None).rotated(new_key(T0), T0, OVERLAP), T0)
    with pytest.raises(JwtSecretError, match="HTTP 409.*Fix: the Secret changed while"):
        secret.write(data, annotations, before)
    stored: Any = core.read_namespaced_secret(SECRET, NAMESPACE)
    assert "jwks.json" not in (stored.data or {})
    # written from a fresh read, it goes through
    secret.write(data, annotations, secret.read())
    stored = core.read_namespaced_secret(SECRET, NAMESPACE)
    assert "jwks.json" in stored.data
