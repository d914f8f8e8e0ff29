"""Rotating the API's JWT signing keys, and pruning the keys whose overlap has passed.

Both follow the same path: read the Secret (the version to go back to), write the new key set,
roll the API Deployment (the pod template's ``twinme.ai/jwt-kids`` annotation changes with the
set, so new pods load it) and wait for the rollout as a release does, then ask the running API:

- after a rotation, a token signed with the new key must be accepted, and one signed with the
  previous key too (the overlap: tokens issued before the rotation stay valid);
- after a prune, a token signed with the current key must still be accepted.

When the rollout fails or the API answers otherwise, the previous Secret version is put back and
the Deployment rolled again to it (:class:`RotationFailed` says whether that recovered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release.jwt.check import TokenCheck, sign_token
from twinme_ops.release.jwt.keys import KeySet, keyset_from_secret, new_key, secret_content
from twinme_ops.release.jwt.secret import JwtSecret, SecretVersion
from twinme_ops.servers.kube import KubernetesResource

KIDS_TEMPLATE_ANNOTATION = "twinme.ai/jwt-kids"


@dataclass
class RotationOutcome:
    """What a rotation or prune did: the key set now served and what was checked."""

    action: str  # "rotated", "pruned", "nothing to prune"
    keyset: KeySet
    removed: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    rollout_s: float = 0.0


class RotationFailed(RuntimeError):
    """The new key set did not prove itself; the previous Secret was put back.

    ``rolled_back`` is whether the API runs the previous key set again and accepts its key;
    ``keyset`` is that previous set.
    """

    def __init__(self, reason: str, *, rolled_back: bool, rollback_detail: str, keyset: KeySet):
        super().__init__(reason)
        self.reason = reason
        self.rolled_back = rolled_back
        self.rollback_detail = rollback_detail
        self.keyset = keyset
        self.kids = keyset.kids()


@dataclass
class KeyRotation:
    """The Secret, the Deployment that loads it, and how the running API is asked."""

    secret: JwtSecret
    kube: KubernetesResource
    check: TokenCheck
    log: Log
    clock: Callable[[], datetime] = field(default=lambda: datetime.now().astimezone())

    def current(self) -> tuple[SecretVersion, KeySet]:
        """The Secret as it is, and its key set."""
        version = self.secret.read()
        return version, keyset_from_secret(version.data, version.annotations, self.secret.target)

    def rotate(self, overlap: timedelta) -> RotationOutcome:
        """Make a new current key; the old one is accepted for ``overlap`` more."""
        now = self.clock()
        before, keyset = self.current()
        after = keyset.rotated(new_key(now), now, overlap)
        assert after.current is not None and after.current.private_pem is not None
        old = keyset.current
        self.log.info(
            f"rotating JWT keys of {self.secret.target}: new key {after.current.kid}"
            + (f", {old.kid} accepted until {overlap} from now" if old else " (first key)")
        )
        checks = [(after.current.kid, after.current.private_pem, True)]
        if old is not None and old.private_pem is not None:
            checks.append((old.kid, old.private_pem, True))
        outcome = self._apply(before, keyset, after, now, checks, "rotated")
        outcome.removed = [k for k in keyset.kids() if k not in after.kids()]
        return outcome

    def prune(self) -> RotationOutcome:
        """Remove the retired keys whose overlap has passed (nothing changes when none has)."""
        now = self.clock()
        before, keyset = self.current()
        expired = [k.kid for k in keyset.expired(now)]
        if not expired:
            return RotationOutcome("nothing to prune", keyset)
        after = keyset.pruned(now)
        assert after.current is not None and after.current.private_pem is not None
        self.log.info(f"removing expired JWT keys {expired} from {self.secret.target}")
        checks = [(after.current.kid, after.current.private_pem, True)]
        outcome = self._apply(before, keyset, after, now, checks, "pruned")
        outcome.removed = expired
        return outcome

    def _roll(self, keyset: KeySet, cause: str) -> float:
        started = time.monotonic()
        self.kube.set_template_annotations(
            {KIDS_TEMPLATE_ANNOTATION: ",".join(keyset.kids())}, change_cause=cause
        )
        self.kube.wait_for_rollout(log=self.log)
        return time.monotonic() - started

    def _verify(self, checks: list[tuple[str, bytes, bool]], now: datetime) -> list[str]:
        lines = []
        for kid, pem, accepted in checks:
            attempts = self.check.expect(sign_token(kid, pem, now), kid, accepted)
            word = "accepted" if accepted else "refused"
            lines.append(f"token signed with {kid} {word} (after {attempts} attempt(s))")
            self.log.info(lines[-1])
        return lines

    def _apply(
        self,
        before: SecretVersion,
        old: KeySet,
        new: KeySet,
        now: datetime,
        checks: list[tuple[str, bytes, bool]],
        action: str,
    ) -> RotationOutcome:
        data, annotations = secret_content(new, now)
        self.secret.write(data, annotations, before)
        try:
            rollout_s = self._roll(new, f"jwt keys {action}: {','.join(new.kids())}")
            lines = self._verify(checks, self.clock())
        except Exception as exc:
            reason = redact(exc)
            self.log.warning(f"JWT key {action} failed, putting the previous Secret back: {reason}")
            raise self._rollback(before, old, reason) from None
        return RotationOutcome(action, new, checks=lines, rollout_s=rollout_s)

    def _rollback(self, before: SecretVersion, old: KeySet, reason: str) -> RotationFailed:
        try:
            self.secret.restore(before)
            self._roll(old, f"jwt keys rolled back: {reason}")
            if old.current is not None and old.current.private_pem is not None:
                self._verify([(old.current.kid, old.current.private_pem, True)], self.clock())
        except Exception as exc:
            detail = f"rollback did not recover: {redact(exc)}"
            return RotationFailed(reason, rolled_back=False, rollback_detail=detail, keyset=old)
        detail = "previous Secret restored, API rolled and " + (
            "accepts the previous key" if old.current else "back to no key"
        )
        return RotationFailed(reason, rolled_back=True, rollback_detail=detail, keyset=old)
