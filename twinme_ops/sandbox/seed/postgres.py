"""The seed's PostgreSQL rows, generated server-side in one transaction.

Rows come from ``generate_series``, ``md5`` of integers and ``sin`` for embedding components, so
scale 1 (about 100 MB) takes seconds, not minutes. Every TwinMe table is truncated first; the
monthly ``session_events`` partitions the rows need are created if missing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import psycopg

from twinme_ops.sandbox.seed.data import (
    AGENTS,
    CORPUS,
    CORPUS_LONG,
    EVENTS,
    TOPICS,
    SeedCounts,
    SeedReport,
)

logger = logging.getLogger(__package__)  # the seed's one logger, twinme_ops.sandbox.seed

TABLES = ("users", "conversations", "messages", "document_chunks", "sessions", "session_events")
EMBEDDING_DIM = 384


def _h(salt: str, expr: str) -> str:
    """SQL for a deterministic non-negative 31-bit hash of an integer expression."""
    return f"(('x' || substr(md5('{salt}' || ({expr})::text), 1, 8))::bit(32)::int & 2147483647)"


def _pick(options: list[str], salt: str, expr: str) -> str:
    """SQL choosing one of ``options`` deterministically."""
    array = "ARRAY[" + ", ".join("'" + o.replace("'", "''") + "'" for o in options) + "]"
    return f"({array})[1 + {_h(salt, expr)} % {len(options)}]"


def _text(salt: str, expr: str, min_len: int, spread: int) -> str:
    """SQL for ``min_len + h % spread`` characters of the corpus from a hashed offset."""
    offset = f"1 + {_h(salt + 'o', expr)} % {len(CORPUS)}"
    length = f"{min_len} + {_h(salt + 'l', expr)} % {spread}"
    return f"substr(%(corpus)s, {offset}, {length})"


_FIRST = ["Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Gabriel", "Hana", "Inès", "Jules"]
_LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Leroy", "Moreau"]
_DOCS = ["contrat", "cv", "notes-reunion", "rapport-annuel", "thesis", "facture", "roadmap"]
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
                   {_pick(TOPICS, "ct", "i")} || ' #' || i,
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
                   {_pick(AGENTS, "sa", "i")}
            FROM generate_series(1, {c.sessions}) i
            """,
        ),
        (
            "session_events",
            f"""
            INSERT INTO session_events (id, session_id, event_type, payload, occurred_at)
            SELECT i, sess,
                   {_pick(EVENTS, "et", "i")},
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
    literals = {"%(anchor)s": _quote(anchor.isoformat()), "%(corpus)s": _quote(CORPUS_LONG)}
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
