"""PostgreSQL settings, drift: what each desired setting needs, and the drift check.

:func:`assess` compares one desired value with the server's state (the value in effect and the
one its configuration files hold) and says what the setting needs: nothing, ``ALTER SYSTEM``, a
reload, a restart, or a person (a value set by ``ALTER ROLE``/``ALTER DATABASE`` wins over
``ALTER SYSTEM``), with one sentence for the drift report. :func:`settings_drift` changes
nothing; :mod:`~twinme_ops.database.postgres.settings.converge` acts on the same assessment.
No Dagster in this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twinme_ops.database.postgres.settings.declared import refuse_unmanaged
from twinme_ops.database.postgres.settings.live import SettingState, read_settings

if TYPE_CHECKING:
    import psycopg

# What a setting needs
OK, ALTER, RELOAD, RESTART, OVERRIDDEN = "ok", "alter", "reload", "restart", "overridden"


def assess(want: str, st: SettingState) -> tuple[str, str]:
    """(what the setting needs, a sentence for the drift report)."""
    want_text = st.shown(want)
    effective_ok = st.same(want, st.setting)
    # What the server will use after a reload/restart: the files' value, else the current one
    configured = st.configured if st.configured is not None else st.setting
    configured_ok = st.same(want, configured)
    if not configured_ok:
        if effective_ok:
            return ALTER, (
                f"{st.name} is {st.display}, but the configuration files hold "
                f"{st.shown(st.configured or '')} (applied at the next "
                f"{'restart' if st.restart_only else 'reload'}); want {want_text}"
            )
        needs = " (needs a restart)" if st.restart_only else ""
        return ALTER, f"{st.name} is {st.display}, want {want_text}{needs}"
    if st.per_session:
        # This session's value was fixed when it connected; new sessions get the files' value.
        return OK, ""
    if not effective_ok and st.overridden:
        return OVERRIDDEN, (
            f"{st.name} is {st.display}, want {want_text}: overridden by "
            f"{st.source_text}, which wins over ALTER SYSTEM"
        )
    if st.restart_only:
        if not effective_ok:
            return RESTART, (f"{st.name} is {st.display}, want {want_text} (set, pending restart)")
        if st.pending_restart:
            return RELOAD, f"{st.name} is {want_text}, pending restart flag set (reload clears it)"
        return OK, ""
    if effective_ok:
        return OK, ""
    return RELOAD, f"{st.name} is {st.display}, want {want_text} (set, pending reload)"


def settings_drift(conn: psycopg.Connection[Any], desired: Mapping[str, str]) -> list[str]:
    """Differences between ``desired`` and the server, one sentence each; empty when converged.

    A value set by ALTER SYSTEM but waiting for a restart (or a reload) is drift too, and says
    so ("shared_buffers is 128MB, want 256MB (set, pending restart)").
    """
    refuse_unmanaged(desired)
    states = read_settings(conn, list(desired))
    drift = []
    for name, want in desired.items():
        status, message = assess(want, states[name])
        if status != OK:
            drift.append(message)
    return drift


__all__ = ["assess", "settings_drift"]
