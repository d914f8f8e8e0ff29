"""Logs that leave the pod: one JSON object per line on stdout, for the cluster's log shipper.

With ``TWINME_LOG_FORMAT=json`` (production, deploy/dagster/values.yaml) every run, every sensor
tick and the access audit write one event per line: ``timestamp`` (UTC, ISO 8601), ``level``,
``logger``, ``run_id``, ``job``, ``step``, ``message``, plus ``sensor``, ``event_type`` and
``error`` when they apply. The shipper (deploy/logging/) parses the line into the document it
sends to Elasticsearch, so these names are a contract (docs/logging.md). Every text field passes
through :func:`~twinme_ops.common.redact.redact`: an exception that quotes a password still
leaves the pod without it. Locally the default stays Dagster's readable text.

This module knows no Dagster: it reads the ``dagster_meta`` dict that Dagster's log manager and
sensor logger put on a record, and does without it for any other ``logging`` record.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from twinme_ops.common.redact import redact

LOG_FORMAT_ENV = "TWINME_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
# where Dagster's log manager and InstigationLogger put a record's run, job, step and message
_DAGSTER_META = "dagster_meta"
# containerd and CRI-O split a line longer than 16 KiB into partial lines (tagged P), which the
# shipper would send as pieces: an event's line stays under this many bytes
MAX_LINE_BYTES = 16000
CUT_MARK = " [...cut]"


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``text`` (default) or ``json``, from ``TWINME_LOG_FORMAT``; anything else is an error."""
    env = os.environ if environ is None else environ
    value = env.get(LOG_FORMAT_ENV, "").strip().lower() or "text"
    if value not in LOG_FORMATS:
        raise ValueError(
            f"{LOG_FORMAT_ENV}={value!r} is not a log format. Fix: set {LOG_FORMAT_ENV} to "
            "'json' (one JSON object per line, what the log shipper parses) or 'text' "
            "(readable lines, the default), or unset it."
        )
    return value


def json_logs_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether logs are written as JSON lines (``TWINME_LOG_FORMAT=json``)."""
    return log_format(environ) == "json"


def timestamp(epoch_s: float) -> str:
    """The ``timestamp`` field: UTC, millisecond precision, ``Z`` suffix (Elasticsearch's date)."""
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _error_of(dagster_event: object) -> str:
    """The error a step or run failure event carries (Dagster's SerializableErrorInfo), or ''."""
    data = getattr(dagster_event, "event_specific_data", None)
    error = getattr(data, "error", None)
    if error is None:
        return ""
    to_string = getattr(error, "to_string", None)
    text = to_string() if callable(to_string) else str(error)
    return str(text)


def log_event(record: logging.LogRecord) -> dict[str, Any]:
    """The JSON event of a log record, every text field redacted."""
    meta = getattr(record, _DAGSTER_META, None)
    meta = meta if isinstance(meta, Mapping) else {}
    message = meta.get("orig_message") or record.getMessage()
    event: dict[str, Any] = {
        "timestamp": timestamp(record.created),
        "level": record.levelname,
        "logger": record.name,
        "run_id": meta.get("run_id") or "",
        "job": meta.get("job_name") or "",
        "step": meta.get("step_key") or "",
        "message": redact(message),
    }
    # a sensor's (or schedule's) own messages: InstigationLogger names the instigator
    if meta.get("name") and meta.get("repository_name"):
        event["sensor"] = meta["name"]
    sensor = getattr(record, "twinme_sensor", None)
    if sensor:
        event["sensor"] = sensor
    dagster_event = meta.get("dagster_event")
    if dagster_event is not None:
        event["event_type"] = getattr(dagster_event, "event_type_value", "")
    error = _error_of(dagster_event)
    if record.exc_info:
        error = logging.Formatter().formatException(record.exc_info)
    if error:
        event["error"] = redact(error)
    return event


def json_line(event: dict[str, Any]) -> str:
    """``event`` as one line of JSON of at most :data:`MAX_LINE_BYTES` bytes: the error (its
    stack trace), then the message, lose their end when the line would be longer."""
    line = json.dumps(event, ensure_ascii=False)
    for key in ("error", "message"):
        if len(line.encode()) <= MAX_LINE_BYTES:
            break
        text = str(event.get(key) or "")
        # the longest head of the text that fits (escaping makes bytes and characters differ)
        low, high = 0, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            candidate = json.dumps({**event, key: text[:mid] + CUT_MARK}, ensure_ascii=False)
            if len(candidate.encode()) <= MAX_LINE_BYTES:
                low = mid
            else:
                high = mid - 1
        event = {**event, key: text[:low] + CUT_MARK}
        line = json.dumps(event, ensure_ascii=False)
    return line


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see :func:`log_event`)."""

    def format(self, record: logging.LogRecord) -> str:
        return json_line(log_event(record))


def json_logger(name: str, level: int | str = logging.INFO) -> logging.Logger:
    """A logger (not in logging's registry, so never shared) that writes JSON lines to stdout."""
    logger = logging.Logger(name, level)
    logger.addHandler(JsonLinesHandler(only_when_json=False))
    logger.propagate = False
    return logger


class JsonLinesHandler(logging.StreamHandler):
    """The handler dagster.yaml's ``python_logs.dagster_handler_config`` attaches to every run:
    JSON lines on stdout with ``TWINME_LOG_FORMAT=json``, nothing otherwise (Dagster's own text
    console stays the local default). The format is read when Dagster builds a run's log
    manager, so a run follows the environment its worker started with."""

    def __init__(self, level: int | str = logging.NOTSET, only_when_json: bool = True) -> None:
        super().__init__(sys.stdout)
        self.setLevel(level)
        self.setFormatter(JsonFormatter())
        self.enabled = json_logs_enabled() if only_when_json else True

    # whatever sys.stdout is at each write (a test's capture, a worker's redirected stream)
    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if self.enabled:
            super().emit(record)
