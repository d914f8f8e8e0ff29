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
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field, field_validator

from twinme_ops.alerting.alert import Alert
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact, register_secret

_fallback_log = logging.getLogger("twinme_ops.slack")


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
        try:
            # here, not at the top: slack_sdk is not loaded with the code location
            from twinme_ops.alerting.slack_delivery import webhook_client

            client = webhook_client(
                self.webhook_url,
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                max_retry_after_s=self.max_retry_after_s,
            )
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
