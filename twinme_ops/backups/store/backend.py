"""What the two backends of :class:`~twinme_ops.backups.store.base.BackupStore` share.

:class:`Backend` is the interface :class:`~twinme_ops.backups.store.base.BackupStore` calls and the
part of a backend that does not depend on where the bytes live: the redacted location, the
listings' rules (only valid set ids and artifact names, sorted) and the wording of a missing or
taken artifact. :mod:`twinme_ops.backups.store.local` and :mod:`twinme_ops.backups.store.s3` hold
only what is specific to a directory or a bucket.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from twinme_ops.backups.store.base import (
    ArtifactExistsError,
    ArtifactNotFoundError,
    StoredEntry,
    is_artifact_name,
)
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from twinme_ops.backups.store.immutability import BucketFacts, ObjectLock


class BackendWriter(Protocol):
    """A backend's writer: ``commit`` publishes the artifact, ``discard`` leaves nothing behind."""

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class BackendReader(Protocol):
    """A backend's reader over the stored bytes of one artifact."""

    def read(self, n: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


class Backend(ABC):
    """A storage backend (:mod:`~twinme_ops.backups.store.local`,
    :mod:`~twinme_ops.backups.store.s3`) and the parts both share.

    :class:`BackupStore` checks set ids and artifact names before calling it. Shared here: the
    redacted location (:meth:`describe`), the listings' rules (only valid set ids and artifact
    names, sorted by name, an unfinished write after the complete artifact of that name) and the
    guard of :meth:`remove_partial`. A backend supplies its raw listings (:meth:`_set_ids`,
    :meth:`_entries`) and its own reads, writes and deletes.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def describe(self) -> str:
        return redact(self.url)

    def list_sets(self) -> list[str]:
        return sorted(s for s in self._set_ids() if is_artifact_name(s))

    def list_artifacts(self, set_id: str) -> dict[str, int]:
        return {e.name: e.size for e in self._listing(set_id, partial=False)}

    def list_entries(self, set_id: str) -> list[StoredEntry]:
        return self._listing(set_id, partial=True)

    def _listing(self, set_id: str, partial: bool) -> list[StoredEntry]:
        found = (e for e in self._entries(set_id, partial) if is_artifact_name(e.name))
        return sorted(found, key=lambda e: (e.name, e.partial))

    def remove_partial(self, set_id: str, entry: StoredEntry, min_age_s: float) -> bool:
        return entry.partial and self._remove_partial(set_id, entry, min_age_s)

    @abstractmethod
    def _set_ids(self) -> Iterable[str]:
        """Names of the root's direct children (folders, common prefixes), unfiltered."""

    @abstractmethod
    def _entries(self, set_id: str, partial: bool) -> Iterable[StoredEntry]:
        """The set's objects, unfiltered; its unfinished writes too when ``partial``."""

    @abstractmethod
    def _remove_partial(self, set_id: str, entry: StoredEntry, min_age_s: float) -> bool:
        """Remove the unfinished write ``entry`` if its writer is gone."""

    # what each backend does its own way (BackupStore documents each)
    @abstractmethod
    def check_writable(self) -> None: ...
    @abstractmethod
    def writer(self, set_id: str, name: str, size_hint: int | None) -> BackendWriter: ...
    @abstractmethod
    def create(self, set_id: str, name: str, data: bytes) -> None: ...
    @abstractmethod
    def open_reader(self, set_id: str, name: str) -> BackendReader: ...
    @abstractmethod
    def exists(self, set_id: str, name: str) -> bool: ...
    @abstractmethod
    def delete(self, set_id: str, name: str) -> None: ...
    @abstractmethod
    def delete_set(self, set_id: str, first: tuple[str, ...]) -> None: ...

    # immutability (S3 Object Lock); a local directory has none of it
    def immutability(self, probe: bool) -> BucketFacts | None:
        """What the bucket says about its protection; None where it does not apply."""
        return None

    def lock_of(self, set_id: str, name: str) -> ObjectLock | None:
        return None

    def extend_lock(self, set_id: str, until: datetime, before: datetime, mode: str) -> int:
        return 0

    def hidden_names(self, set_id: str) -> list[str]:
        return []


def not_found(where: object) -> ArtifactNotFoundError:
    """The error of a read or inspection whose artifact ``where`` does not exist."""
    return ArtifactNotFoundError(redact(f"artifact not found: {where}"))


def taken(where: object) -> ArtifactExistsError:
    """The error of a create-only write whose name ``where`` already exists."""
    return ArtifactExistsError(redact(f"{where} already exists"))
