"""Sensor ticks in the same JSON lines as runs (``TWINME_LOG_FORMAT=json``).

:func:`logged_tick` wraps a sensor's function: what the sensor logs through ``context.log``
goes to stdout as JSON instead of Dagster's text console (the UI's tick log keeps it as well),
and each tick ends with one line saying what it decided (runs requested, or the skip reason)
or the error it raised, redacted. In text mode the sensor runs untouched.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
from dagster._core.definitions.instigation_logger import DispatchingLogHandler

from twinme_ops.common.json_log import JsonLinesHandler, json_logger, log_format

F = TypeVar("F", bound=Callable[..., Any])
TICK_LOGGER = "twinme_ops.sensors"


def _context_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for value in (*args, *kwargs.values()):
        if isinstance(value, dg.SensorEvaluationContext | dg.RunStatusSensorContext):
            return value
    return None


def _outcome(result: Any) -> str:
    """What a tick decided, in a few words."""
    if result is None:
        return "no result"
    if isinstance(result, dg.SkipReason):
        return f"skipped: {result.skip_message or 'no reason given'}"
    if isinstance(result, dg.RunRequest):
        return f"1 run requested (run_key {result.run_key})"
    if isinstance(result, dg.SensorResult):
        runs = len(result.run_requests or [])
        if result.skip_reason is not None:
            return f"skipped: {result.skip_reason.skip_message}"
        return f"{runs} run(s) requested"
    if isinstance(result, list):
        return f"{len(result)} result(s)"
    return type(result).__name__


class _SensorName(logging.Filter):
    """Names the sensor on each record (Dagster does only when it knows the repository)."""

    def __init__(self, sensor: str) -> None:
        super().__init__()
        self.sensor = sensor

    def filter(self, record: logging.LogRecord) -> bool:
        record.twinme_sensor = self.sensor
        return True


def _json_console(context: Any, sensor: str) -> None:
    """Send the sensor's own ``context.log`` lines to stdout as JSON, not Dagster's text."""
    log = context.log
    for handler in list(log.handlers):
        if isinstance(handler, DispatchingLogHandler):
            log.removeHandler(handler)
    if not any(isinstance(h, JsonLinesHandler) for h in log.handlers):
        handler = JsonLinesHandler(only_when_json=False)
        handler.addFilter(_SensorName(sensor))
        log.addHandler(handler)


def logged_tick(fn: F) -> F:
    """Decorate a sensor function (under ``@dg.sensor``, named as the sensor) so that its ticks
    log JSON lines; Dagster still sees the function's own parameters (``functools.wraps``)."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if log_format() != "json":
            return fn(*args, **kwargs)
        tick_log = json_logger(TICK_LOGGER)
        extra = {"twinme_sensor": name}
        context = _context_of(args, kwargs)
        if context is not None:
            _json_console(context, name)
        try:
            result = fn(*args, **kwargs)
        except Exception:
            tick_log.error(f"sensor {name}: tick failed", exc_info=True, extra=extra)
            raise
        tick_log.log(logging.INFO, f"sensor {name}: {_outcome(result)}", extra=extra)
        return result

    return wrapper  # type: ignore[return-value]
