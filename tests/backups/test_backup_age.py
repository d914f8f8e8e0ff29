"""age-encrypted sets through the real jobs (issue 14): the backup needs only the recipient, the
drill and a person with the identity restore them (the person with age, zstd and pg_restore),
AES-256-GCM sets taken before stay readable, and PostgreSQL's roles come back first."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pyrage
import pytest

from tests.support.backup_helpers import (
    PARTITION,
    read_manifest,
    run_backup,
    run_drill_job,
    run_text,
    store_for,
)
from twinme_ops.backups.drill import run_drill
from twinme_ops.backups.keys import BackupKeys
from twinme_ops.backups.manifest import DRILL, MANIFEST, manifest_bytes
from twinme_ops.common.pgtools import pg_bin


@pytest.fixture
def age_key(tmp_path: Path) -> tuple[pyrage.x25519.Identity, Path]:
    """An identity and its key file, as ``age-keygen -o key.txt`` writes it."""
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(0o600)
    return identity, path


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    return evaluation


def _by_hand(artifact: Path, key_file: Path, tail: list[str]) -> subprocess.CompletedProcess:
    """``age -d -i KEY ARTIFACT | zstd -d | TAIL``, as the runbook writes it (pipefail on)."""
    command = f"set -o pipefail; age -d -i '{key_file}' '{artifact}' | zstd -d -c | " + " ".join(
        f"'{part}'" for part in tail
    )
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)


def test_age_set_needs_only_the_recipient_and_restores_with_the_identity(
    sandbox,
    backup_env: dict[str, str],
    age_key: tuple[pyrage.x25519.Identity, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    identity, key_file = age_key
    recipient = str(identity.to_public())
    # the backup side: the recipient only
    monkeypatch.setenv("TWINME_BACKUP_AGE_RECIPIENTS", recipient)
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    for step in ("postgres_backup", "redis_backup", "files_backup", "backup_set"):
        assert result.asset_materializations_for_node(step), step
    # the set is complete; its drill, in the same run, cannot decrypt: it says what it needs
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    manifest = read_manifest(store)
    assert set(manifest["artifacts"]) == {"globals", "postgres", "redis", "files"}
    for art in manifest["artifacts"].values():
        assert art["name"].endswith(".zst.age")
        assert art["encryption"] == {
            "algorithm": "age",
            "format": "age-encryption.org/v1",
            "recipients": [recipient],
        }
    evaluation = _check(result)
    assert not evaluation.passed
    reason = str(evaluation.description)
    assert recipient in reason and "TWINME_BACKUP_AGE_IDENTITY_FILE" in reason
    assert "Fix:" in reason and "intact" in reason

    # where restores run: the identity file; the drill passes on the very same set
    monkeypatch.setenv("TWINME_BACKUP_AGE_IDENTITY_FILE", str(key_file))
    drill_instance = dg.DagsterInstance.ephemeral()
    drill = run_drill_job(PARTITION, drill_instance)
    assert drill.success, run_text(drill_instance, drill)[-3000:]
    record = json.loads(store.get_bytes(PARTITION, DRILL))
    assert record["passed"] and record["restored"]["postgres"]["roles"] >= 1
    secret = str(identity)
    assert secret not in run_text(instance, result) + run_text(drill_instance, drill)
    assert secret not in json.dumps(manifest) + json.dumps(record)

    # by hand: age -d | zstd -d | pg_restore, into a fresh database; the roles script
    set_dir = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / PARTITION
    dump = set_dir / manifest["artifacts"]["postgres"]["name"]
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS restored_by_hand")
        conn.execute("CREATE DATABASE restored_by_hand")
    by_hand_url = sandbox.database_url.rsplit("/", 1)[0] + "/restored_by_hand"
    restored = _by_hand(
        dump, key_file, [pg_bin("pg_restore"), "--no-owner", "--exit-on-error", "-d", by_hand_url]
    )
    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(by_hand_url) as conn:
        row = conn.execute("SELECT count(*) FROM messages").fetchone()
    assert row == (manifest["artifacts"]["postgres"]["source"]["tables"]["public.messages"],)
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE restored_by_hand")
    plain = tmp_path / "postgres.dump"
    subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; age -d -i '{key_file}' '{dump}' | zstd -d -c > '{plain}'",
        ],
        check=True,
    )
    listing = subprocess.run(
        [pg_bin("pg_restore"), "--list", str(plain)], capture_output=True, text=True, check=True
    )
    assert "TABLE DATA public messages" in listing.stdout
    roles = _by_hand(set_dir / manifest["artifacts"]["globals"]["name"], key_file, ["cat"])
    assert roles.returncode == 0, roles.stderr
    assert "CREATE ROLE postgres;" in roles.stdout
    # the wrong identity: age refuses, and the pipeline fails (no empty "success")
    other = tmp_path / "other.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    refused = _by_hand(dump, other, [pg_bin("pg_restore"), "--list"])
    assert refused.returncode != 0 and "no identity matched" in refused.stderr


def test_aes_sets_taken_before_stay_readable_after_the_switch_to_age(
    sandbox,
    backup_env: dict[str, str],
    age_key: tuple[pyrage.x25519.Identity, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity, key_file = age_key
    aes = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("TWINME_BACKUP_ENCRYPTION_KEY", aes)
    assert run_backup(partition="2026-11-22").success
    # the switch: recipients set, the AES key kept for reading, the identity where drills run
    monkeypatch.setenv("TWINME_BACKUP_AGE_RECIPIENTS", str(identity.to_public()))
    monkeypatch.setenv("TWINME_BACKUP_AGE_IDENTITY_FILE", str(key_file))
    assert run_backup(partition="2026-11-23").success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    old, new = read_manifest(store, "2026-11-22"), read_manifest(store, "2026-11-23")
    assert {a["encryption"]["algorithm"] for a in old["artifacts"].values()} == {"AES-256-GCM"}
    assert {a["encryption"]["algorithm"] for a in new["artifacts"].values()} == {"age"}
    for set_id in ("2026-11-22", "2026-11-23"):
        drill = run_drill_job(set_id)
        assert drill.success and _check(drill).passed, set_id
    # without the AES key, the old set fails its drill with the variable to set
    monkeypatch.delenv("TWINME_BACKUP_ENCRYPTION_KEY")
    drill = run_drill_job("2026-11-22")
    assert not drill.success
    assert "TWINME_BACKUP_ENCRYPTION_KEY" in str(_check(drill).description)


def test_a_flipped_byte_in_an_age_artifact_fails_the_drill(
    sandbox,
    backup_env: dict[str, str],
    age_key: tuple[pyrage.x25519.Identity, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity, key_file = age_key
    monkeypatch.setenv("TWINME_BACKUP_AGE_RECIPIENTS", str(identity.to_public()))
    monkeypatch.setenv("TWINME_BACKUP_AGE_IDENTITY_FILE", str(key_file))
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    name = read_manifest(store)["artifacts"]["postgres"]["name"]
    path = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / PARTITION / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    drill = run_drill_job(PARTITION)
    assert not drill.success
    reason = str(_check(drill).description)
    assert name in reason and "checksum mismatch" in reason


@pytest.fixture
def auditor_role(sandbox) -> Iterator[str]:
    """A role of the source that only a grant ties to the data; removed afterwards (the sandbox
    is shared by the session)."""
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        conn.execute("CREATE ROLE twinme_auditor NOLOGIN")
        conn.execute("GRANT SELECT ON public.messages TO twinme_auditor")
    try:
        yield "twinme_auditor"
    finally:
        with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
            conn.execute("REVOKE ALL ON public.messages FROM twinme_auditor")
            conn.execute("DROP ROLE twinme_auditor")


def test_a_custom_role_and_its_grant_survive_the_drill(
    sandbox, backup_env: dict[str, str], auditor_role: str
) -> None:
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    manifest = read_manifest(store)
    assert auditor_role in manifest["artifacts"]["globals"]["source"]["roles"]
    assert manifest["artifacts"]["postgres"]["source"]["table_grants"][auditor_role] == 1
    record = json.loads(store.get_bytes(PARTITION, DRILL))
    assert record["passed"], record["reason"]

    # the drill does check them: a role or a grant the scratch server lacks fails it
    ghost = json.loads(json.dumps(manifest))
    ghost["artifacts"]["globals"]["source"]["roles"].append("ghost_role")
    store.put_bytes(PARTITION, MANIFEST, manifest_bytes(ghost))
    result = run_drill(store, PARTITION, key=BackupKeys(), record=False)
    assert not result.passed and "ghost_role" in result.failures["globals"]
    grants = json.loads(json.dumps(manifest))
    grants["artifacts"]["postgres"]["source"]["table_grants"][auditor_role] = 2
    store.put_bytes(PARTITION, MANIFEST, manifest_bytes(grants))
    result = run_drill(store, PARTITION, key=BackupKeys(), record=False)
    assert not result.passed and "grants on tables differ" in result.failures["postgres"]


def test_a_set_without_roles_still_restores(sandbox, backup_env: dict[str, str]) -> None:
    """Sets taken before roles were backed up: the drill restores without owners or grants."""
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    manifest = read_manifest(store)
    del manifest["artifacts"]["globals"]
    del manifest["durations_s"]["globals"]
    store.put_bytes(PARTITION, MANIFEST, manifest_bytes(manifest))
    result = run_drill(store, PARTITION, key=None, record=False)
    assert result.passed, result.reason
    assert "roles" not in result.restored["postgres"]
