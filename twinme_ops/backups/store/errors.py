"""What a backup store operation can fail with; every message is redacted and says what to fix."""

from __future__ import annotations

from datetime import datetime


class StoreError(Exception):
    """A backup store operation failed; the message is redacted and says what to fix."""


class ArtifactNotFoundError(StoreError):
    """The requested artifact does not exist in the store."""


class StoreLocationError(StoreError, ValueError):
    """``TWINME_BACKUP_URL`` is not a backup location this store can use."""


class ArtifactExistsError(StoreError):
    """A create-only write found the name taken: the existing object was left untouched."""


class ObjectLockedError(StoreError):
    """A set could not be deleted yet: a version of it is under Object Lock (or a legal hold).

    Nothing of the set was deleted. ``until`` is when the last lock ends (None for a legal hold):
    a later retention run deletes it then.
    """

    def __init__(self, message: str, until: datetime | None) -> None:
        super().__init__(message)
        self.until = until
