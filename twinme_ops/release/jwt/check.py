"""Asking the running API whether it accepts a token: ``GET <api>/auth/check``.

The rotation signs a short-lived token (5 minutes, subject ``twinme-ops-jwt-check``) with a key
and sends it; the API answers 200 when a key of its set with that ``kid`` verifies it, 401
otherwise. Right after a rollout a Service may still route to an old pod for a moment, so the
expected answer is awaited for a few attempts before the check fails. The token is never logged.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta

from twinme_ops.common.redact import redact, redact_url
from twinme_ops.release.jwt.keys import ALGORITHM

CHECK_SUBJECT = "twinme-ops-jwt-check"


def sign_token(kid: str, private_pem: bytes, now: datetime) -> str:
    """A 5-minute token signed with the private key ``private_pem``, its header naming ``kid``."""
    import jwt  # PyJWT loads cryptography: imported when a token is signed, not at load

    payload = {"sub": CHECK_SUBJECT, "iat": now, "exp": now + timedelta(minutes=5)}
    return jwt.encode(payload, private_pem, algorithm=ALGORITHM, headers={"kid": kid})


class TokenCheckFailed(RuntimeError):
    """The API did not answer as the rotation expects; the message says what it saw."""


@dataclass(frozen=True)
class TokenCheck:
    """How the API is asked: base URL, path, attempts."""

    api_url: str
    path: str = "/auth/check"
    attempts: int = 10
    delay_s: float = 0.5
    timeout_s: float = 5.0

    def status(self, token: str) -> int:
        """The HTTP status ``path`` answers for ``token``."""
        url = self.api_url.rstrip("/") + "/" + self.path.lstrip("/")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            raise TokenCheckFailed(
                f"{redact_url(url)} is unreachable: {redact(exc)[:200]}. Fix: check "
                "TWINME_API_URL and that the API is up (kubectl rollout status)."
            ) from None

    def expect(self, token: str, kid: str, accepted: bool) -> int:
        """Wait until the API accepts (200) or refuses (401) the token signed with ``kid``;
        returns the attempts it took, raises :class:`TokenCheckFailed` after the last one."""
        want = 200 if accepted else 401
        seen: list[int] = []
        for attempt in range(1, self.attempts + 1):
            seen.append(self.status(token))
            if seen[-1] == want:
                return attempt
            if seen[-1] not in (200, 401):
                break
            time.sleep(self.delay_s)
        word = "accept" if accepted else "refuse"
        raise TokenCheckFailed(
            f"the API at {redact_url(self.api_url)} did not {word} a token signed with key "
            f"{kid}: {self.path} answered {json.dumps(seen[-3:])} (expected {want})"
        )
