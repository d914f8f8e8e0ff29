"""What an ``execute_in_process`` result says: the one materialization's metadata, the one step
failure's description (tests read them instead of walking the events each time)."""

from __future__ import annotations

from typing import Any

import dagster as dg


def materialized_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The metadata of the run's only asset materialization, as plain values."""
    [event] = result.get_asset_materialization_events()
    materialization = event.step_materialization_data.materialization
    return {k: v.value for k, v in materialization.metadata.items()}


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    """The description of the run's only step failure (a ``dg.Failure``'s)."""
    [event] = [e for e in result.all_events if e.is_step_failure]
    data = event.step_failure_data
    assert data is not None and data.user_failure_data is not None
    return data.user_failure_data.description or ""
