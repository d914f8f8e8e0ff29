"""Slack: one resource that delivers alerts through an incoming webhook, and never fails a run.

Every message goes through :meth:`SlackNotifier.send`: an
:class:`~twinme_ops.alerting.alert.Alert`
(rendered as self-contained text plus Block Kit blocks, with a link to the run when
``TWINME_DAGSTER_URL`` is set) or a plain string. Deliveries are retried with exponential backoff
on 5xx and connection errors, and after Slack's ``Retry-After`` (capped) on 429. An alert that
cannot be delivered is logged as a warning with its full text and never raises. Without a webhook
URL the alert is written to the log instead, so local runs show exactly what would have been sent.
"""

from __future__ import annotations

import logging
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field, field_validator
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from twinme_ops.alerting.alert import Alert
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact, register_secret

_fallback_log = logging.getLogger("twinme_ops.slack")


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


class _ServerErrorRetry(RetryHandler):
    """Retry every 5xx (slack_sdk's own handler only retries 500 and 503)."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and 500 <= response.status_code < 600


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


class _RateLimitRetry(RetryHandler):
    """On 429, wait as ``Retry-After`` says (capped: a job must not hang), else back off."""

    def __init__(self, max_retry_count: int, backoff: _Backoff, max_wait_s: float) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=backoff)
        self.max_wait_s = max_wait_s

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code == 429

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


class SlackNotifier(dg.ConfigurableResource):
    """Sends alerts to a Slack incoming webhook (``SLACK_WEBHOOK_URL``)."""

    webhook_url: str = Field(default="", description="Slack incoming webhook URL. Empty: log only.")
    dagster_url: str = Field(
        default="",
        description="Base URL of the Dagster UI (TWINME_DAGSTER_URL): alerts link to "
        "<dagster_url>/runs/<run_id>. Empty: no link.",
    )
    timeout_s: int = Field(default=10, description="HTTP timeout of one delivery attempt.")
    max_retries: int = Field(default=3, description="Retries on 429, 5xx and connection errors.")
    backoff_s: float = Field(
        default=0.5, description="First retry delay on 5xx/connection errors; doubles each time."
    )
    max_retry_after_s: float = Field(
        default=30.0, description="Longest wait honoured from a 429's Retry-After header."
    )

    @field_validator("dagster_url")
    @classmethod
    def _check_dagster_url(cls, value: str) -> str:
        if isinstance(value, dg.EnvVar) or not value:
            return value
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            # a bad link setting must not take the code location (and so the backups) down:
            # alerts go out without the link, and the mistake is logged with its fix
            _fallback_log.warning(
                f"TWINME_DAGSTER_URL={redact(value)!r} is not an http(s) URL: alerts are sent "
                "without a run link. Fix: set it to the Dagster UI's base URL, e.g. "
                "https://dagster.example.com (alerts link to <it>/runs/<id>), or unset it."
            )
            return ""
        return value

    def render(self, message: str | Alert) -> tuple[str, list[dict[str, Any]] | None]:
        """The text and blocks that :meth:`send` posts, redacted."""
        if isinstance(message, Alert):
            return message.text(self.dagster_url), message.blocks(self.dagster_url)
        return redact(message), None

    def send(
        self,
        message: str | Alert,
        log: Log | None = None,
    ) -> bool:
        """Deliver ``message`` (redacted first). Returns whether Slack accepted it; never raises."""
        logger = _fallback_log if log is None else log
        # before rendering: an error text may quote the webhook URL itself
        register_secret(self.webhook_url)
        try:
            text, blocks = self.render(message)
        except Exception as exc:  # a formatting bug must not fail the job it reports on
            text, blocks = redact(getattr(message, "headline", message)), None
            logger.warning(f"Slack alert could not be formatted ({redact(exc)}); sending text only")
        if not self.webhook_url:
            logger.info(f"Slack not configured (SLACK_WEBHOOK_URL unset); alert: {text}")
            return False
        backoff = _Backoff(self.backoff_s)
        client = WebhookClient(
            self.webhook_url,
            timeout=self.timeout_s,
            logger=_sdk_log,
            retry_handlers=[
                ConnectionErrorRetryHandler(
                    max_retry_count=self.max_retries, interval_calculator=backoff
                ),
                _RateLimitRetry(self.max_retries, backoff, self.max_retry_after_s),
                _ServerErrorRetry(max_retry_count=self.max_retries, interval_calculator=backoff),
            ],
        )
        try:
            response = client.send(text=text, blocks=blocks, unfurl_links=False)
        except Exception as exc:  # an alert must never fail the job it reports on
            logger.warning(f"Slack alert not delivered ({redact(exc)}); alert was: {text}")
            return False
        if response.status_code != 200:
            status = response.status_code
            retried = f" after {self.max_retries} retries" if status == 429 or status >= 500 else ""
            logger.warning(
                f"Slack alert not delivered (HTTP {status}{retried}: "
                f"{redact(response.body)[:200]}); alert was: {text}"
            )
            return False
        return True
