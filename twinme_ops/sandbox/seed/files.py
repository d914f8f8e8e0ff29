"""The seed's file storage: a tree of uploads with nested dirs, a relative symlink, odd modes.

Only the top-level entries the seed creates are removed first. Every seeded file and directory
gets the same mtime, so a tar of the tree is reproducible too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from twinme_ops.sandbox.seed.data import CORPUS, CORPUS_LONG, SeedCounts, SeedReport, num

logger = logging.getLogger(__package__)  # the seed's one logger, twinme_ops.sandbox.seed

FILE_ROOTS = ("users", "shared", "private", "latest-export.json")
# Every seeded file and directory gets this mtime, so a tar of the tree is reproducible too.
FILES_MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z


def _file_bytes(i: int, size: int, ext: str) -> bytes:
    if ext in (".json", ".txt", ".md"):
        start = num("ft", i) % len(CORPUS)
        text = (CORPUS_LONG[start:] + " ") * (size // len(CORPUS) + 2)
        return text.encode()[:size]
    header = {".pdf": b"%PDF-1.7\n", ".png": b"\x89PNG\r\n\x1a\n"}.get(ext, b"")
    return (header + hashlib.shake_256(f"file:{i}".encode()).digest(size))[:size]


def _file_size(i: int) -> int:
    r = num("fs", i)
    bucket = r % 100
    if bucket < 70:
        return 200 + r // 100 % 8000
    if bucket < 95:
        return 8_000 + r // 100 % 56_000
    return 64_000 + r // 100 % 450_000


def _set_mode_time(path: Path, mode: int) -> None:
    os.chmod(path, mode)
    os.utime(path, (FILES_MTIME, FILES_MTIME))


def seed_files(files_dir: Path, counts: SeedCounts, report: SeedReport) -> None:
    """A tree of uploads with nested dirs, a relative symlink, a 0600 and a 0755 file."""
    t0 = time.monotonic()
    files_dir.mkdir(parents=True, exist_ok=True)
    for name in FILE_ROOTS:
        path = files_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)

    written: list[tuple[Path, int]] = []

    def put(rel: str, data: bytes, mode: int = 0o644) -> None:
        path = files_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        _set_mode_time(path, mode)
        written.append((path, len(data)))

    put(
        "shared/scripts/rotate-uploads.sh",
        b"#!/bin/sh\n# Moves uploads older than 90 days to cold storage.\nset -eu\n"
        b'find "${1:-.}" -type f -mtime +90 -print\n',
        0o755,
    )
    put(
        "private/service-account.json",
        json.dumps({"type": "demo", "client_id": "sandbox", "note": "not a real key"}).encode(),
        0o600,
    )
    put("shared/README.md", _file_bytes(0, 1500, ".md"))
    kinds = [("uploads", ".pdf"), ("avatars", ".png"), ("exports", ".json"), ("notes", ".txt")]
    users = max(1, min(counts.users, counts.files // 4))
    first_export = ""
    for i in range(1, counts.files - len(written) + 1):
        user = 1 + (i - 1) % users
        sub, ext = kinds[num("fk", i) % len(kinds)]
        rel = f"users/u{user:06d}/{sub}/{sub[:-1]}-{i:05d}{ext}"
        if sub == "uploads" and i % 5 == 0:
            rel = f"users/u{user:06d}/uploads/{2025 + i % 2}/{sub[:-1]}-{i:05d}{ext}"
        if ext == ".json" and not first_export:
            first_export = rel
        put(rel, _file_bytes(i, _file_size(i), ext))
    if not first_export:
        first_export = "users/u000001/exports/export-00000.json"
        put(first_export, _file_bytes(10**6, 900, ".json"))
    link = files_dir / "latest-export.json"
    link.symlink_to(first_export)  # relative on purpose: the tree can move (restores)
    os.utime(link, (FILES_MTIME, FILES_MTIME), follow_symlinks=False)
    for root in FILE_ROOTS[:3]:
        for dirpath, _dirs, _files in os.walk(files_dir / root, topdown=False):
            _set_mode_time(Path(dirpath), 0o755)
    report.files = len(written)
    report.file_bytes = sum(size for _, size in written)
    report.symlinks = 1
    logger.info(
        "files: %s files, 1 symlink, %.1f MB in %.1f s",
        report.files,
        report.file_bytes / 1e6,
        time.monotonic() - t0,
    )
