"""Publication ``twinme_pub`` as converged state: exactly the spec's five tables, every
operation.

:func:`converge_publication` creates or corrects it; :func:`publication_drift` changes nothing.
The connection must be in autocommit mode (see :mod:`twinme_ops.database.postgres.objects`). No
Dagster in
this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.objects import (
    Conn,
    PgObjectsError,
    Statement,
    converge_plan,
    require_tables,
)

PUBLICATION = "twinme_pub"
PUBLICATION_TABLES = ("users", "conversations", "messages", "document_chunks", "sessions")
PUBLISH_OPERATIONS = "insert, update, delete, truncate"


class PublicationError(PgObjectsError):
    """The publication exists in a form the converge step will not rewrite on its own."""


def _table_oids(conn: Conn, tables: Sequence[str]) -> dict[int, str]:
    """``{oid: schema.table}`` for tables found through the search path, in ``tables`` order."""
    rows = conn.execute(
        "SELECT c.oid::int8, format('%%I.%%I', n.nspname, c.relname) "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) "
        "JOIN pg_class c ON c.oid = to_regclass(t) JOIN pg_namespace n ON n.oid = c.relnamespace "
        "ORDER BY i",
        (list(tables),),
    ).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


def _publication_plan(conn: Conn) -> list[Statement]:
    require_tables(conn, PUBLICATION_TABLES)
    desired = _table_oids(conn, PUBLICATION_TABLES)
    wanted = ", ".join(desired.values())
    pub = conn.execute(
        "SELECT oid::int8, puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate "
        "FROM pg_publication WHERE pubname = %s",
        (PUBLICATION,),
    ).fetchone()
    if pub is None:
        return [
            Statement(
                PUBLICATION,
                f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {wanted}",
                f"publication {PUBLICATION} does not exist",
            )
        ]
    pub_oid, all_tables, all_operations = pub
    if all_tables:
        raise PublicationError(
            f"publication {PUBLICATION} is FOR ALL TABLES: it cannot be narrowed to "
            f"{', '.join(PUBLICATION_TABLES)} in place. Fix: DROP PUBLICATION {PUBLICATION} "
            f"(subscribers resynchronise) and run this step again"
        )
    rels = conn.execute(
        "SELECT r.prrelid::int8, format('%%I.%%I', n.nspname, c.relname), "
        "r.prqual IS NOT NULL OR r.prattrs IS NOT NULL "
        "FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = %s ORDER BY 2",
        (pub_oid,),
    ).fetchall()
    schemas = [
        r[0]
        for r in conn.execute(
            "SELECT quote_ident(n.nspname) FROM pg_publication_namespace p "
            "JOIN pg_namespace n ON n.oid = p.pnnspid WHERE p.pnpubid = %s ORDER BY 1",
            (pub_oid,),
        ).fetchall()
    ]
    published = {int(r[0]): str(r[1]) for r in rels}
    partial = [str(r[1]) for r in rels if r[2] and int(r[0]) in desired]
    missing = [name for oid, name in desired.items() if oid not in published]
    extra = [name for oid, name in published.items() if oid not in desired]
    plan: list[Statement] = []
    if schemas or partial:
        # SET TABLE replaces tables, schemas, row filters and column lists in one statement
        reasons = [f"{PUBLICATION} publishes every table of schema {s}" for s in schemas]
        reasons += [
            f"{PUBLICATION} publishes {t} with a row filter or column list" for t in partial
        ]
        reasons += [f"{PUBLICATION} does not publish {t}" for t in missing]
        reasons += [f"{PUBLICATION} also publishes {t}" for t in extra]
        plan.append(
            Statement(
                PUBLICATION,
                f"ALTER PUBLICATION {PUBLICATION} SET TABLE {wanted}",
                "; ".join(reasons),
            )
        )
    else:
        if missing:
            plan.append(
                Statement(
                    PUBLICATION,
                    f"ALTER PUBLICATION {PUBLICATION} ADD TABLE {', '.join(missing)}",
                    f"{PUBLICATION} does not publish {', '.join(missing)}",
                )
            )
        if extra:
            plan.append(
                Statement(
                    PUBLICATION,
                    f"ALTER PUBLICATION {PUBLICATION} DROP TABLE {', '.join(extra)}",
                    f"{PUBLICATION} also publishes {', '.join(extra)}",
                )
            )
    if not all_operations:
        plan.append(
            Statement(
                PUBLICATION,
                f"ALTER PUBLICATION {PUBLICATION} SET (publish = '{PUBLISH_OPERATIONS}')",
                f"{PUBLICATION} does not publish every operation ({PUBLISH_OPERATIONS})",
            )
        )
    return plan


def publication_drift(conn: Conn) -> list[str]:
    """How ``twinme_pub`` differs from exactly the spec's five tables (every operation)."""
    return [st.reason for st in _publication_plan(conn)]


def converge_publication(conn: Conn, log: Log | None = None) -> ConvergeReport:
    """Make ``twinme_pub`` publish exactly users, conversations, messages, document_chunks and
    sessions.

    Creates the publication when missing, ``ADD TABLE`` the missing tables and ``DROP TABLE`` the
    extra ones: the declared state is exact, and a table published by mistake would be copied to
    every subscriber (an extra table that a subscriber needs must be declared here). Schemas,
    row filters and column lists are replaced with ``SET TABLE``. A ``FOR ALL TABLES``
    publication raises :class:`PublicationError`: narrowing it means dropping it.

    ``wal_level`` does not gate any of this: ``CREATE PUBLICATION`` with ``wal_level`` below
    ``logical`` only warns, and the publication is created. Nothing is decoded until
    ``wal_level = logical`` (a setting that needs a server restart): the report says so in its
    notes, on every run.
    """
    report = converge_plan(conn, _publication_plan, log)
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if row and row[0] != "logical":
        report.notes.append(
            f"wal_level is {row[0]}: {PUBLICATION} exists, but subscribers receive nothing until "
            f"wal_level = logical, which needs a server restart"
        )
    return report
