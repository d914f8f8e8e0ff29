"""Redis converged: ``CONFIG SET`` only what differs, persisted with ``CONFIG REWRITE``.

:func:`converge_redis` changes a server only through ``CONFIG SET``, where the drift check
(:mod:`~twinme_ops.database.redis.drift`) found a difference; settings Redis cannot change at
runtime are listed as pending a restart. Without ``CONFIG`` (renamed away in production) it
changes nothing and says how to apply the file. The password is never touched.
No Dagster in this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.redis.declared import RedisConfigError
from twinme_ops.database.redis.drift import redis_config_drift, show_value
from twinme_ops.database.redis.live import METHOD_INFO, config_file

if TYPE_CHECKING:
    import redis


def converge_redis(
    client: redis.Redis, desired: Mapping[str, str], log: Log | None = None
) -> ConvergeReport:
    """Bring a live server to ``desired`` with ``CONFIG SET``, only where it differs.

    Settings Redis cannot change at runtime (immutable, protected) are listed as pending a
    restart. After a change, ``CONFIG REWRITE`` persists it when the server was started from a
    config file. Without CONFIG (renamed away in production) nothing is changed: the report
    says to deploy the rendered file and restart Redis. The password is never touched.
    """
    import redis

    drift = redis_config_drift(client, desired)
    report = ConvergeReport()

    def note(text: str) -> None:
        report.notes.append(text)
        if log is not None:
            log.info(text)

    if drift.method == METHOD_INFO:
        report.pending_restart.extend(drift.differing)
        if drift.differences:
            note(
                "CONFIG is renamed away: deploy the rendered file and restart Redis to apply: "
                + "; ".join(drift.differences)
            )
        else:
            note(
                "CONFIG is renamed away: nothing changed; INFO shows no drift on "
                f"{', '.join(drift.checked) or 'no setting'}; not verifiable through INFO "
                f"(apply by deploying the rendered file): {', '.join(drift.unverifiable)}"
            )
        return report

    for name, (want, have) in drift.differing.items():
        try:
            client.config_set(name, want)
        except redis.ResponseError as exc:
            message = str(exc).lower()
            if "immutable" in message or "protected" in message:
                report.pending_restart.append(name)
                continue
            raise RedisConfigError(f"CONFIG SET {name} failed: {redact(exc)}") from None
        report.add(
            name, f"CONFIG SET {name} {show_value(want)}", log, detail=f"was {show_value(have)}"
        )
    if report.pending_restart:
        note(
            "not settable at runtime, deploy the rendered file and restart Redis to apply: "
            + "; ".join(
                f"{n}: desired {show_value(drift.differing[n][0])}" for n in report.pending_restart
            )
        )
    if report.changes:
        started_from = config_file(client)
        if not started_from:
            note(
                "Redis was started without a config file: the changes hold until the next "
                "restart; deploy the rendered file to keep them"
            )
            return report
        try:
            client.config_rewrite()
        except redis.ResponseError as exc:
            note(
                f"CONFIG REWRITE of {started_from} failed ({redact(exc)}): the changes hold until "
                "the next restart; deploy the rendered file to keep them"
            )
            return report
        report.add("config file", "CONFIG REWRITE", log, detail=started_from)
        note(
            f"CONFIG REWRITE rewrote {started_from}; Redis writes it with mode 0644 (less its "
            "umask) whatever it was, and it holds the password: restrict it again"
        )
    return report


__all__ = ["converge_redis"]
