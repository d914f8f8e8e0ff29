"""Slack: one resource that delivers alerts through an incoming webhook, and never fails a run.

Without a webhook URL the alert is written to the run's log instead, so local runs show exactly
what would have been sent.
"""

from __future__ import annotations

import logging

import dagster as dg
from pydantic import Field
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from twinme_ops.lib.redact import redact, register_secret

_fallback_log = logging.getLogger("twinme_ops.slack")


class SlackNotifier(dg.ConfigurableResource):
    """Sends alerts to a Slack incoming webhook (``SLACK_WEBHOOK_URL``)."""

    webhook_url: str = Field(default="", description="Slack incoming webhook URL. Empty: log only.")
    timeout_s: int = Field(default=10, description="HTTP timeout of one delivery attempt.")
    max_retries: int = Field(default=3, description="Retries on 429, 5xx and connection errors.")

    def send(self, text: str, log: logging.Logger | dg.DagsterLogManager | None = None) -> bool:
        """Deliver ``text`` (redacted first). Returns whether Slack accepted it; never raises."""
        logger = log or _fallback_log
        text = redact(text)
        if not self.webhook_url:
            logger.info(f"Slack not configured (SLACK_WEBHOOK_URL unset); alert: {text}")
            return False
        register_secret(self.webhook_url)
        client = WebhookClient(
            self.webhook_url,
            timeout=self.timeout_s,
            retry_handlers=[
                ConnectionErrorRetryHandler(max_retry_count=self.max_retries),
                RateLimitErrorRetryHandler(max_retry_count=self.max_retries),
                ServerErrorRetryHandler(max_retry_count=self.max_retries),
            ],
        )
        try:
            response = client.send(text=text)
        except Exception as exc:  # an alert must never fail the job it reports on
            logger.warning(f"Slack alert not delivered ({redact(exc)}); alert was: {text}")
            return False
        if response.status_code != 200:
            logger.warning(
                f"Slack alert not delivered (HTTP {response.status_code}: "
                f"{redact(response.body)[:200]}); alert was: {text}"
            )
            return False
        return True
