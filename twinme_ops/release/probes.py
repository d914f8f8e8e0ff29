"""HTTP probes of a deployment: ``GET <base URL><path>``, retried while a new pod warms up.

:func:`probe` never raises: the :class:`ProbeResult` carries the last status (or the connection
error, redacted) and the latency of the last attempt. The deployment verification
(:mod:`twinme_ops.release.verification`) probes ``/health`` and ``/ready`` with it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from twinme_ops.common.redact import redact, redact_url


def _join(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one HTTP probe: last status seen (None: no answer), latency and attempts."""

    path: str
    url: str  # redacted
    status: int | None
    latency_ms: float | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the endpoint answered 200."""
        return self.status == 200

    @property
    def reachable(self) -> bool:
        """Whether the server answered at all (any HTTP status)."""
        return self.status is not None

    def reason(self) -> str:
        """A one-line explanation of a failed probe, naming the path."""
        if self.ok:
            return f"{self.path} answered 200"
        if self.status is None:
            return (
                f"{self.path} unreachable at {self.url} after {self.attempts} attempt(s): "
                f"{self.error}"
            )
        return f"{self.path} answered HTTP {self.status} (expected 200) at {self.url}"


def probe(
    url: str,
    path: str,
    timeout_s: float = 5,
    retries: int = 2,
    retry_delay_s: float = 1.0,
) -> ProbeResult:
    """GET ``url`` + ``path``; retry ``retries`` times on connection errors and non-200 answers.

    A freshly rolled-out pod may still be warming up, hence the retries. Never raises: the result
    carries the last status (or the connection error) and the latency of the last attempt.
    """
    full = _join(url, path)
    shown = redact_url(full)
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    attempts = 0
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_delay_s)
        attempts += 1
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(full, timeout=timeout_s) as resp:
                resp.read()
                status, error = resp.status, None
        except urllib.error.HTTPError as e:
            status, error = e.code, None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            status, error = None, redact(reason)
        latency_ms = (time.perf_counter() - start) * 1000
        if status == 200:
            break
    return ProbeResult(path, shown, status, latency_ms, attempts, error)
