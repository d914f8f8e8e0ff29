"""Deterministic TwinMe demo data for PostgreSQL, Redis and file storage.

The same ``scale`` and ``anchor`` give the same rows, keys and files, byte for byte. PostgreSQL
rows are generated server-side (``generate_series``, ``md5`` of integers, ``sin`` for embedding
components), so scale 1 (about 100 MB) takes seconds, not minutes.

Seeding replaces what it owns: every TwinMe table is truncated, Redis keys are deleted by prefix
with ``SCAN`` (never ``FLUSHALL``: production renames it away and other data may share the
server), and only the top-level entries the seed creates are removed from the files directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

logger = logging.getLogger(__name__)

TABLES = ("users", "conversations", "messages", "document_chunks", "sessions", "session_events")
REDIS_PREFIXES = (
    "cache:",
    "session:",
    "ratelimit:",
    "conv:",
    "user:",
    "leaderboard:",
    "events:",
)
FILE_ROOTS = ("users", "shared", "private", "latest-export.json")
# Every seeded file and directory gets this mtime, so a tar of the tree is reproducible too.
FILES_MTIME = 1_767_225_600  # 2026-01-01T00:00:00Z
EMBEDDING_DIM = 384

_CORPUS = " ".join(
    [
        "TwinMe apprend de vos conversations pour construire un jumeau numérique fidèle.",
        "Your digital twin remembers the documents you shared and answers in your voice.",
        "Le modèle de langage s'appuie sur des extraits vectorisés de vos documents.",
        "Each message is embedded and compared with the closest chunks by cosine distance.",
        "Les sessions vocales sont transcrites puis résumées à la fin de chaque échange.",
        "A conversation keeps its context window short and retrieves what it needs.",
        "Votre jumeau peut rédiger un courriel, préparer une réunion ou résumer un rapport.",
        "Privacy first: every user only ever sees their own conversations and documents.",
        "Les documents importés sont découpés en fragments de quelques centaines de mots.",
        "The assistant cites the document name and the chunk it used to answer.",
        "Pendant la nuit, une sauvegarde complète protège la base, le cache et les fichiers.",
        "Latency matters: the p95 of an answer must stay well below two seconds.",
        "Le tableau de bord montre l'activité des sessions et les sujets les plus fréquents.",
        "Uploaded files are scanned, indexed and linked to the profile of their owner.",
        "Chaque réponse peut être notée, ce qui aide le jumeau à mieux vous ressembler.",
        "Rate limits protect the API from bursts while keeping interactive use fluid.",
        "Les préférences de style, de ton et de langue sont conservées dans votre profil.",
        "Search combines trigram similarity on titles with vector similarity on content.",
        "Un export JSON de toutes vos données est disponible à tout moment.",
        "When a session ends, its events are aggregated into daily usage statistics.",
        "Le jumeau numérique ne partage jamais vos informations avec un autre utilisateur.",
        "Meeting notes, contracts, CVs and research papers are the most common uploads.",
        "La recherche sémantique retrouve un passage même quand les mots diffèrent.",
        "Background jobs refresh embeddings when a document is replaced by a new version.",
    ]
)
# Text generation takes substrings of the corpus: keep room for the longest one.
_CORPUS_LONG = (_CORPUS + " ") * 3


@dataclass
class SeedCounts:
    """How much data a scale means; every table gets at least a handful of rows."""

    users: int
    conversations: int
    messages: int
    document_chunks: int
    sessions: int
    session_events: int
    redis_keys: int
    files: int

    @classmethod
    def for_scale(cls, scale: float) -> SeedCounts:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")

        def n(base: int, minimum: int) -> int:
            return max(minimum, round(base * scale))

        users = n(1000, 5)
        conversations = n(10_000, 2 * users)
        return cls(
            users=users,
            conversations=conversations,
            messages=n(200_000, 4 * conversations),
            document_chunks=n(8_000, 16),
            sessions=n(20_000, 10),
            session_events=n(180_000, 40),
            redis_keys=n(1000, 60),
            files=n(200, 20),
        )


@dataclass
class SeedReport:
    """What :func:`seed` wrote, for logs, the CLI and tests."""

    scale: float
    anchor: str
    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    files: int = 0
    file_bytes: int = 0
    symlinks: int = 0
    database_size: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "anchor": self.anchor,
            "rows": dict(self.rows),
            "redis_keys": self.redis_keys,
            "files": self.files,
            "file_bytes": self.file_bytes,
            "symlinks": self.symlinks,
            "database_size": self.database_size,
            "seconds": round(self.seconds, 2),
        }


def default_anchor() -> dt.datetime:
    """First instant of the current UTC month: seeds within a month are identical."""
    now = dt.datetime.now(dt.UTC)
    return dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)


def seed(
    database_url: str,
    redis_url: str,
    files_dir: Path,
    scale: float,
    *,
    anchor: dt.datetime | None = None,
) -> SeedReport:
    """Replace the TwinMe demo data in the three stores with deterministic data at ``scale``.

    ``anchor`` (default: start of the current UTC month) is the "now" of the data: rows span the
    12 months before it, the months that the schema's ``session_events`` partitions cover.
    """
    anchor = anchor or default_anchor()
    counts = SeedCounts.for_scale(scale)
    report = SeedReport(scale=scale, anchor=anchor.isoformat())
    started = time.monotonic()
    logger.info("seeding TwinMe demo data at scale %s (anchor %s)", scale, anchor.date())
    seed_postgres(database_url, counts, anchor, report)
    seed_redis(redis_url, counts, report)
    seed_files(Path(files_dir), counts, report)
    report.seconds = time.monotonic() - started
    logger.info(
        "seed done in %.1f s: %s rows, %s MB database, %s Redis keys, %s files (%.1f MB)",
        report.seconds,
        sum(report.rows.values()),
        report.database_size // 1_000_000,
        report.redis_keys,
        report.files,
        report.file_bytes / 1e6,
    )
    return report


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _h(salt: str, expr: str) -> str:
    """SQL for a deterministic non-negative 31-bit hash of an integer expression."""
    return f"(('x' || substr(md5('{salt}' || ({expr})::text), 1, 8))::bit(32)::int & 2147483647)"


def _pick(options: list[str], salt: str, expr: str) -> str:
    """SQL choosing one of ``options`` deterministically."""
    array = "ARRAY[" + ", ".join("'" + o.replace("'", "''") + "'" for o in options) + "]"
    return f"({array})[1 + {_h(salt, expr)} % {len(options)}]"


def _text(salt: str, expr: str, min_len: int, spread: int) -> str:
    """SQL for ``min_len + h % spread`` characters of the corpus from a hashed offset."""
    offset = f"1 + {_h(salt + 'o', expr)} % {len(_CORPUS)}"
    length = f"{min_len} + {_h(salt + 'l', expr)} % {spread}"
    return f"substr(%(corpus)s, {offset}, {length})"


_FIRST = ["Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Gabriel", "Hana", "Inès", "Jules"]
_LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Leroy", "Moreau"]
_TOPICS = [
    "Préparer la réunion",
    "Résumé du rapport",
    "Idées de voyage",
    "Draft an email",
    "Plan de formation",
    "Budget trimestriel",
    "Interview prep",
    "Notes de lecture",
]
_DOCS = ["contrat", "cv", "notes-reunion", "rapport-annuel", "thesis", "facture", "roadmap"]
_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "TwinMe-Android/2.14.0 (Pixel 8; Android 14)",
    "TwinMe-iOS/2.14.1 (iPhone15,2; iOS 17.5)",
]
_EVENTS = ["login", "page_view", "message_sent", "document_uploaded", "search", "voice_call"]
_PATHS = ["/app/chat", "/app/documents", "/app/settings", "/app/twin", "/app/search"]

YEAR_S = 365 * 86400


def _session_start(expr: str) -> str:
    # Sessions (and their events, a few minutes later) fall in the 12 months before the anchor.
    return f"(%(anchor)s::timestamptz - interval '365 days' + ({_h('s', expr)} % {YEAR_S - 86400}) * interval '1 second')"  # noqa: E501


def _conversation_start(expr: str) -> str:
    return f"(%(anchor)s::timestamptz - interval '365 days' + ({_h('c', expr)} % {YEAR_S - 7 * 86400}) * interval '1 second')"  # noqa: E501


def _embedding(expr: str) -> str:
    # Smooth, distinct, deterministic vectors: one frequency and phase per chunk.
    return (
        f"(SELECT array_agg(round(sin(({expr}) * 0.7311 + k * (0.013 + (({expr}) % 97) * 0.0007))"
        f"::numeric, 6) ORDER BY k) FROM generate_series(1, {EMBEDDING_DIM}) k)"
        f"::float8[]::vector({EMBEDDING_DIM})"
    )


def _postgres_statements(c: SeedCounts) -> list[tuple[str, str]]:
    return [
        (
            "users",
            f"""
            INSERT INTO users (id, email, display_name, created_at)
            SELECT i,
                   'user' || lpad(i::text, 6, '0') || '@twinme.test',
                   {_pick(_FIRST, "uf", "i")} || ' ' || {_pick(_LAST, "ul", "i")},
                   %(anchor)s::timestamptz - interval '400 days'
                       + ({_h("u", "i")} % {30 * 86400}) * interval '1 second'
            FROM generate_series(1, {c.users}) i
            """,
        ),
        (
            "conversations",
            f"""
            INSERT INTO conversations (id, user_id, title, created_at)
            SELECT i, 1 + {_h("cu", "i")} % {c.users},
                   {_pick(_TOPICS, "ct", "i")} || ' #' || i,
                   {_conversation_start("i")}
            FROM generate_series(1, {c.conversations}) i
            """,
        ),
        (
            "messages",
            f"""
            INSERT INTO messages (id, conversation_id, role, content, "timestamp")
            SELECT i, conv,
                   CASE WHEN turn % 2 = 0 THEN 'user' ELSE 'assistant' END,
                   CASE WHEN turn % 2 = 0 THEN {_text("mu", "i", 40, 140)}
                        ELSE {_text("ma", "i", 110, 240)} END,
                   {_conversation_start("conv")} + turn * interval '47 seconds'
                       + ({_h("mt", "i")} % 40) * interval '1 second'
            FROM (SELECT i, 1 + (i - 1) % {c.conversations} AS conv,
                         (i - 1) / {c.conversations} AS turn
                  FROM generate_series(1, {c.messages}) i) s
            """,
        ),
        (
            "document_chunks",
            f"""
            INSERT INTO document_chunks
                (id, user_id, document_name, chunk_index, content, embedding)
            SELECT i, 1 + {_h("du", "doc")} % {c.users},
                   {_pick(_DOCS, "dn", "doc")} || '-' || doc || '.pdf',
                   (i - 1) % 8,
                   {_text("dc", "i", 200, 400)},
                   {_embedding("i")}
            FROM (SELECT i, 1 + (i - 1) / 8 AS doc FROM generate_series(1, {c.document_chunks}) i) s
            """,
        ),
        (
            "sessions",
            f"""
            INSERT INTO sessions (id, user_id, start_time, end_time, user_agent)
            SELECT i, 1 + {_h("su", "i")} % {c.users},
                   {_session_start("i")},
                   {_session_start("i")} + (60 + {_h("se", "i")} % 5400) * interval '1 second',
                   {_pick(_AGENTS, "sa", "i")}
            FROM generate_series(1, {c.sessions}) i
            """,
        ),
        (
            "session_events",
            f"""
            INSERT INTO session_events (id, session_id, event_type, payload, occurred_at)
            SELECT i, sess,
                   {_pick(_EVENTS, "et", "i")},
                   jsonb_build_object(
                       'path', {_pick(_PATHS, "ep", "i")},
                       'duration_ms', {_h("ed", "i")} % 5000)
                   , {_session_start("sess")} + k * interval '30 seconds'
                       + ({_h("eo", "i")} % 30) * interval '1 second'
            FROM (SELECT i, 1 + (i - 1) % {c.sessions} AS sess, (i - 1) / {c.sessions} AS k
                  FROM generate_series(1, {c.session_events}) i) s
            """,
        ),
    ]


def ensure_event_partitions(conn: psycopg.Connection[Any], anchor: dt.datetime) -> list[str]:
    """Create the monthly ``session_events`` partitions the seeded rows need (12 months up to
    the anchor's month), so none land in DEFAULT even when the sandbox schema is months old.

    Call it right after the TRUNCATE: with DEFAULT empty, attaching a partition cannot fail.
    """
    created: list[str] = []
    first = dt.date(anchor.year - 1, anchor.month, 1)
    for i in range(13):
        index = first.year * 12 + first.month - 1 + i
        month = dt.date(index // 12, index % 12 + 1, 1)
        nxt = dt.date((index + 1) // 12, (index + 1) % 12 + 1, 1)
        name = f"session_events_{month:%Y_%m}"
        row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if row and row[0] is None:
            try:
                with conn.transaction():  # a savepoint: an overlap must not abort the seed
                    conn.execute(
                        f"CREATE TABLE {name} PARTITION OF session_events "
                        f"FOR VALUES FROM ('{month} 00:00:00+00') TO ('{nxt} 00:00:00+00')".encode()
                    )
                created.append(name)
            except psycopg.errors.InvalidObjectDefinition:
                pass  # a partition named otherwise already covers (part of) that month
    return created


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def seed_postgres(
    database_url: str, counts: SeedCounts, anchor: dt.datetime, report: SeedReport
) -> None:
    """Truncate the TwinMe tables and generate rows server-side, in one transaction."""
    # Literals rather than bind parameters: the statements are full of SQL's % operator.
    literals = {"%(anchor)s": _quote(anchor.isoformat()), "%(corpus)s": _quote(_CORPUS_LONG)}
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        with conn.transaction():
            # UTC: timestamps and their text form do not depend on the server's time zone.
            conn.execute("SET LOCAL TimeZone = 'UTC'")
            conn.execute("SET LOCAL synchronous_commit = off")
            conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
            created = ensure_event_partitions(conn, anchor)
            if created:
                logger.info("postgres: created partitions %s", ", ".join(created))
            for table, statement in _postgres_statements(counts):
                t0 = time.monotonic()
                for token, literal in literals.items():
                    statement = statement.replace(token, literal)
                cur = conn.execute(statement.encode())
                report.rows[table] = cur.rowcount
                # Explicit ids: move the identity past them so the API's inserts do not collide.
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)".encode()
                )
                logger.info(
                    "postgres: %s rows in %s (%.1f s)", cur.rowcount, table, time.monotonic() - t0
                )
        conn.autocommit = True
        t0 = time.monotonic()
        conn.execute(("VACUUM ANALYZE " + ", ".join(TABLES)).encode())
        logger.info("postgres: vacuum analyze (%.1f s)", time.monotonic() - t0)
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        report.database_size = int(row[0]) if row else 0


# --------------------------------------------------------------------------------------------
# Redis


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()


def _num(*parts: object) -> int:
    return int.from_bytes(_digest(*parts)[:8], "big")


def delete_owned_keys(client: redis.Redis, prefixes: tuple[str, ...] = REDIS_PREFIXES) -> int:
    """Delete the keys under the seed's prefixes with SCAN + UNLINK; returns how many."""
    deleted = 0
    for prefix in prefixes:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))  # type: ignore[arg-type]
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))  # type: ignore[arg-type]
    return deleted


def _type_counts(total: int) -> dict[str, int]:
    shares = {"hash": 0.2, "list": 0.12, "set": 0.12, "zset": 0.11, "stream": 0.08, "rate": 0.05}
    counts = {kind: max(3, round(total * share)) for kind, share in shares.items()}
    counts["string"] = max(3, total - sum(counts.values()))
    return counts


def seed_redis(redis_url: str, counts: SeedCounts, report: SeedReport) -> None:
    """Every Redis type TwinMe uses, some keys with a TTL, written with pipelines."""
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    try:
        t0 = time.monotonic()
        removed = delete_owned_keys(client)
        kinds = _type_counts(counts.redis_keys)
        pipe = client.pipeline(transaction=False)
        written = 0

        def flush(force: bool = False) -> None:
            if force or len(pipe) >= 1000:
                pipe.execute()

        for i in range(kinds["string"]):
            if i % 2 == 0:
                key = f"cache:user:{1 + i // 2}:profile"
                value = json.dumps(
                    {"id": 1 + i // 2, "lang": ("fr", "en")[i % 4 // 2], "plan": "pro"},
                    sort_keys=True,
                )
            else:
                key = f"cache:answer:{_digest('answer', i).hex()[:16]}"
                value = _CORPUS_LONG[_num("ans", i) % len(_CORPUS) :][: 80 + _num("al", i) % 400]
            pipe.set(key, value)
            if i % 3 == 0:
                pipe.expire(key, 30 * 86400 + i)
            written += 1
            flush()
        for i in range(kinds["rate"]):
            key = f"ratelimit:10.0.{i // 250}.{i % 250}"
            pipe.set(key, 1 + _num("rl", i) % 100, ex=3600 + i)
            written += 1
        for i in range(kinds["hash"]):
            key = f"session:{_digest('session', i).hex()[:32]}"
            pipe.hset(
                key,
                mapping={
                    "user_id": 1 + _num("su", i) % counts.users,
                    "created_at": 1_760_000_000 + _num("sc", i) % 5_000_000,
                    "user_agent": _AGENTS[_num("sa", i) % len(_AGENTS)],
                    "ip": f"192.0.2.{_num('si', i) % 250}",
                },
            )
            pipe.expire(key, 7 * 86400 + i)
            written += 1
            flush()
        for i in range(kinds["list"]):
            key = f"conv:{1 + i}:recent"
            items = [
                f"msg:{1 + i + j * counts.conversations}" for j in range(5 + _num("ll", i) % 25)
            ]
            pipe.rpush(key, *items)
            written += 1
            flush()
        for i in range(kinds["set"]):
            key = f"user:{1 + i}:tags"
            tags = {_TOPICS[(_num("st", i, j)) % len(_TOPICS)] for j in range(2 + i % 6)}
            pipe.sadd(key, *sorted(tags))
            written += 1
            flush()
        for i in range(kinds["zset"]):
            key = f"leaderboard:{('daily', 'weekly', 'monthly')[i % 3]}:{i}"
            members = {f"user:{1 + _num('zm', i, j) % counts.users}": j * 10 for j in range(15)}
            pipe.zadd(key, members)
            written += 1
            flush()
        for i in range(kinds["stream"]):
            key = f"events:{('chat', 'upload', 'voice', 'audit')[i % 4]}:{i}"
            for j in range(3 + _num("sl", i) % 12):
                # Explicit ids (never "*"): the same seed must give the same stream.
                fields: dict[Any, Any] = {
                    "type": _EVENTS[_num("se", i, j) % len(_EVENTS)],
                    "user_id": str(1 + _num("sx", i, j) % counts.users),
                }
                pipe.xadd(key, fields, id=f"{1_760_000_000_000 + i * 100_000 + j * 997}-{j}")
            written += 1
            flush()
        flush(force=True)
        report.redis_keys = written
        logger.info(
            "redis: %s keys written (%s old ones removed) in %.1f s",
            written,
            removed,
            time.monotonic() - t0,
        )
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Files


def _file_bytes(i: int, size: int, ext: str) -> bytes:
    if ext in (".json", ".txt", ".md"):
        start = _num("ft", i) % len(_CORPUS)
        text = (_CORPUS_LONG[start:] + " ") * (size // len(_CORPUS) + 2)
        return text.encode()[:size]
    header = {".pdf": b"%PDF-1.7\n", ".png": b"\x89PNG\r\n\x1a\n"}.get(ext, b"")
    return (header + hashlib.shake_256(f"file:{i}".encode()).digest(size))[:size]


def _file_size(i: int) -> int:
    r = _num("fs", i)
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
        sub, ext = kinds[_num("fk", i) % len(kinds)]
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
