"""The audit trail: one JSON line per action taken (or refused) through the webserver.

Each record says who (the verified user, or ``anonymous``), with which roles, did what (the
action and the GraphQL field), to which job, run, schedule or sensor, with which run config
(its sha256, never its content), when, from where (the client address behind the trusted
proxies) and with what outcome (``allowed``, ``denied`` with the reason, ``failed``).

Records go to stdout, where the cluster's log shipper collects them with the other logs
(a ``"log": "twinme.audit"`` field tells them apart). Each record also carries the fields of
every JSON log line (``timestamp``, ``level``, ``logger``, ``message``: common/json_log.py), so
the shipper indexes it like a run's log line (docs/logging.md). When the policy names a file,
records are also appended to it: opened with ``O_APPEND`` and written with one ``write`` per
line, so concurrent writers never interleave a record and nothing is ever rewritten.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from twinme_ops.common.json_log import timestamp
from twinme_ops.common.redact import redact

AUDIT_FIELDS = (
    "time",
    "user",
    "roles",
    "action",
    "field",
    "job",
    "run_id",
    "target",
    "config_digest",
    "source",
    "outcome",
    "reason",
)


class AuditLog:
    """Writes audit records to stdout and, optionally, an append-only file."""

    def __init__(self, path: str | Path | None = None, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path else None
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, **fields: Any) -> dict[str, Any]:
        """Write one record (missing fields are empty strings) and return it."""
        now = datetime.now(UTC)
        outcome = fields.get("outcome", "")
        entry: dict[str, Any] = {
            "timestamp": timestamp(now.timestamp()),
            "level": "INFO" if outcome == "allowed" else "WARNING",
            "logger": "twinme.audit",
            "message": _summary(fields),
            "log": "twinme.audit",
        }
        for name in AUDIT_FIELDS:
            entry[name] = fields.get(name, "")
        entry["time"] = entry["time"] or now.isoformat(timespec="milliseconds")
        # nothing secret belongs in a record; a malformed input could still carry one
        entry = {k: redact(v) if isinstance(v, str) else v for k, v in entry.items()}
        line = json.dumps(entry, sort_keys=False, ensure_ascii=False) + "\n"
        with self._lock:
            if self.path:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                try:
                    os.write(fd, line.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._stream.write(line)
            self._stream.flush()
        return entry


def _summary(fields: dict[str, Any]) -> str:
    """The record in one sentence, the ``message`` a log search shows."""
    user = fields.get("user") or "anonymous"
    what = fields.get("action") or fields.get("field") or "request"
    target = fields.get("job") or fields.get("target") or fields.get("run_id") or ""
    outcome = fields.get("outcome") or "unknown"
    reason = f" ({fields['reason']})" if fields.get("reason") else ""
    return f"{user} {what}{' ' + target if target else ''}: {outcome}{reason}"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of an audit file, oldest first."""
    file = Path(path)
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
