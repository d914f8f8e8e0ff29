"""Delivering through a Slack incoming webhook with slack_sdk, retrying as Slack asks.

:meth:`twinme_ops.alerting.slack.SlackNotifier.send` imports this module when it delivers, not
when the code location loads (slack_sdk is about 30 ms of every load): exponential backoff with
jitter on 5xx and connection errors, Slack's ``Retry-After`` (capped) on 429, and slack_sdk's
debug log with the webhook URL (its token) redacted.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from twinme_ops.common.redact import redact


class _RedactingFilter(logging.Filter):
    """slack_sdk logs the webhook URL (its token) at debug level: mask it like everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


_sdk_log = logging.getLogger("twinme_ops.slack.sdk")
_sdk_log.addFilter(_RedactingFilter())


class _Backoff(RetryIntervalCalculator):
    """``base * 2**attempt`` seconds plus up to 50 % jitter, so retries of many runs spread out."""

    def __init__(self, base_s: float) -> None:
        self.base_s = base_s

    def calculate_sleep_duration(self, current_attempt: int) -> float:
        interval = self.base_s * (2**current_attempt)
        return interval * (1 + random.random() / 2)


class _StatusRetry(RetryHandler):
    """Retry the responses whose HTTP status ``retry_on`` accepts."""

    def __init__(
        self, max_retry_count: int, backoff: _Backoff, retry_on: Callable[[int], bool]
    ) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=backoff)
        self.retry_on = retry_on

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and self.retry_on(response.status_code)


def _server_error(status: int) -> bool:
    """Every 5xx (slack_sdk's own handler only retries 500 and 503)."""
    return 500 <= status < 600


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _RateLimitRetry(_StatusRetry):
    """On 429, wait as ``Retry-After`` says (capped: a job must not hang), else back off."""

    def __init__(self, max_retry_count: int, backoff: _Backoff, max_wait_s: float) -> None:
        super().__init__(max_retry_count, backoff, lambda status: status == 429)
        self.max_wait_s = max_wait_s

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        header = None
        if response is not None:
            for name, values in response.headers.items():
                if name.lower() == "retry-after" and values:
                    header = values[0]
        wait = retry_after_seconds(header)
        if wait is None:
            wait = self.interval_calculator.calculate_sleep_duration(state.current_attempt)
        state.next_attempt_requested = True
        time.sleep(min(wait, self.max_wait_s))
        state.increment_current_attempt()


def webhook_client(
    webhook_url: str,
    *,
    timeout_s: int,
    max_retries: int,
    backoff_s: float,
    max_retry_after_s: float,
) -> WebhookClient:
    """A slack_sdk client for ``webhook_url`` that retries connection errors, 429 and 5xx."""
    backoff = _Backoff(backoff_s)
    return WebhookClient(
        webhook_url,
        timeout=timeout_s,
        logger=_sdk_log,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
            _RateLimitRetry(max_retries, backoff, max_retry_after_s),
            _StatusRetry(max_retries, backoff, _server_error),
        ],
    )
