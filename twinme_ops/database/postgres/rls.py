"""Row-level security on ``conversations`` and ``messages`` as converged state.

The role ``authenticated_users`` and the function ``current_user_id()`` (both used by the spec,
never defined), RLS enabled and forced, the spec's policies (with ``WITH CHECK``), and the
grants that make them usable. :func:`converge_rls` brings them to that state in one transaction;
:func:`rls_drift` changes nothing. The connection must be in autocommit mode (see
:mod:`twinme_ops.database.postgres.objects`). No Dagster in this module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.objects import (
    Conn,
    MissingTablesError,
    Statement,
    converge_plan,
    qualified_table,
    require_tables,
)

RLS_ROLE = "authenticated_users"
RLS_TABLES = ("conversations", "messages")
USER_ID_SETTING = "app.current_user_id"
USER_ID_FUNCTION = "current_user_id"
# What the role may do on RLS_TABLES: the policies then decide which rows.
RLS_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


@dataclass(frozen=True)
class _Policy:
    """A declared policy: its table, the expression (for USING and WITH CHECK) and how
    PostgreSQL prints that expression back (``pg_get_expr``, whitespace normalised)."""

    name: str
    table: str
    expression: str  # with {fn} (the qualified function call) and {conversations}
    printed: str


POLICIES = (
    _Policy(
        "user_conversations",
        "conversations",
        "user_id = {fn}",
        "(user_id = current_user_id())",
    ),
    _Policy(
        "user_messages",
        "messages",
        "conversation_id IN (SELECT id FROM {conversations} WHERE user_id = {fn})",
        "(conversation_id IN (SELECT conversations.id FROM conversations "
        "WHERE (conversations.user_id = current_user_id())))",
    ),
)


def _normalize_expr(expr: str | None, schema: str) -> str | None:
    """Whitespace-insensitive form of a printed expression, without our schema's prefix (the
    printer qualifies names only when the reader's search path does not reach them)."""
    if expr is None:
        return None
    text = re.sub(r"\s+", " ", expr)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\s+\)", ")", text).strip()
    return text.replace(f"{schema}.", "")


def _scalar(conn: Conn, query: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    return row[0] if row else None


def _rls_plan(conn: Conn) -> list[Statement]:
    """Every statement that brings row-level security to its declared state, in a safe order:
    role, function, policies, then RLS on, and the table grants last (granting before RLS is
    forced would open every row, even for a moment)."""
    require_tables(conn, ("users", *RLS_TABLES))
    schema, _ = qualified_table(conn, "conversations")
    tables = {t: qualified_table(conn, t)[1] for t in RLS_TABLES}
    fn = f"{schema}.{USER_ID_FUNCTION}()"
    plan: list[Statement] = []

    role = conn.execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (RLS_ROLE,)
    ).fetchone()
    if role is None:
        plan.append(
            Statement(
                RLS_ROLE, f"CREATE ROLE {RLS_ROLE} NOLOGIN", f"role {RLS_ROLE} does not exist"
            )
        )
    else:
        wrong = [
            (flag, why)
            for flag, why, bad in (
                ("NOLOGIN", "can log in", role[0]),
                ("NOSUPERUSER", "is a superuser", role[1]),
                ("NOBYPASSRLS", "bypasses row-level security", role[2]),
            )
            if bad
        ]
        if wrong:
            plan.append(
                Statement(
                    RLS_ROLE,
                    f"ALTER ROLE {RLS_ROLE} {' '.join(f for f, _ in wrong)}",
                    f"role {RLS_ROLE} {' and '.join(w for _, w in wrong)}",
                )
            )
    role_exists = role is not None

    # current_user_id(): returns the type of users.id; NULL (no row matches) when unset or empty
    id_type = _scalar(
        conn,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass('users') AND attname = 'id' AND NOT attisdropped",
    )
    if id_type is None:
        raise MissingTablesError(str(_scalar(conn, "SELECT current_database()")), ["users.id"])
    body = f"SELECT NULLIF(pg_catalog.current_setting('{USER_ID_SETTING}', true), '')::{id_type}"
    create_fn = (
        f"CREATE OR REPLACE FUNCTION {fn} RETURNS {id_type} LANGUAGE sql STABLE PARALLEL SAFE "
        f"AS $fn${body}$fn$"
    )
    current = conn.execute(
        "SELECT p.oid::int8, format_type(p.prorettype, NULL), p.proretset, p.provolatile, "
        "p.proparallel, p.prosecdef, l.lanname, p.prosrc, p.proconfig "
        "FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE p.pronamespace = %s::regnamespace AND p.proname = %s AND p.pronargs = 0",
        (schema, USER_ID_FUNCTION),
    ).fetchone()
    cascaded: set[tuple[str, str]] = set()  # policies a DROP FUNCTION ... CASCADE removes
    fn_is_new = current is None
    if current is None:
        plan.append(Statement(fn, create_fn, f"function {fn} does not exist"))
    elif current[1] != id_type or current[2]:
        for polname, relname in conn.execute(
            "SELECT pol.polname, format('%%I.%%I', n.nspname, c.relname) FROM pg_depend d "
            "JOIN pg_policy pol ON pol.oid = d.objid JOIN pg_class c ON c.oid = pol.polrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE d.classid = 'pg_policy'::regclass AND d.refobjid = %s",
            (current[0],),
        ).fetchall():
            cascaded.add((str(relname), str(polname)))
        why = f"function {fn} returns {current[1]}, users.id is {id_type}"
        # the return type cannot change in place; the policies that use it go and are recreated
        plan.append(Statement(fn, f"DROP FUNCTION {fn} CASCADE", why))
        plan.append(Statement(fn, create_fn, ""))
        fn_is_new = True
    elif (current[3], current[4], current[5], current[6], current[7].strip(), current[8]) != (
        "s",
        "s",
        False,
        "sql",
        body,
        None,
    ):
        # CREATE OR REPLACE keeps the function's privileges and the policies that use it
        plan.append(Statement(fn, create_fn, f"function {fn} differs from its declared definition"))
    if fn_is_new or not role_exists:
        # a new function's EXECUTE depends on default privileges: grant it rather than assume
        plan.append(Statement(fn, f"GRANT EXECUTE ON FUNCTION {fn} TO {RLS_ROLE}", ""))
    elif not _scalar(
        conn, "SELECT has_function_privilege(%s, %s::regprocedure, 'EXECUTE')", (RLS_ROLE, fn)
    ):
        plan.append(
            Statement(
                fn,
                f"GRANT EXECUTE ON FUNCTION {fn} TO {RLS_ROLE}",
                f"role {RLS_ROLE} cannot execute {fn}",
            )
        )

    # policies: exactly the declared ones (an extra permissive policy would widen access)
    for table in RLS_TABLES:
        qualified = tables[table]
        declared = {p.name: p for p in POLICIES if p.table == table}
        for polname, quoted, cmd, permissive, roles, qual, check in conn.execute(
            "SELECT polname, quote_ident(polname), polcmd, polpermissive, "
            "ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END "
            "      FROM unnest(polroles) AS r ORDER BY 1), "
            "pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
            "FROM pg_policy WHERE polrelid = to_regclass(%s) ORDER BY polname",
            (qualified,),
        ).fetchall():
            if (qualified, polname) in cascaded:
                continue
            policy = declared.get(polname)
            if policy is None:
                plan.append(
                    Statement(
                        qualified,
                        f"DROP POLICY {quoted} ON {qualified}",
                        f"policy {polname} on {table} is not declared",
                    )
                )
                continue
            declared.pop(polname)
            differences = []
            if cmd != "*":
                differences.append(f"applies to {_COMMANDS.get(cmd, cmd)} only, not ALL")
            if not permissive:
                differences.append("is RESTRICTIVE")
            if list(roles) != [RLS_ROLE]:
                differences.append(f"is for {', '.join(roles)}, not {RLS_ROLE}")
            if _normalize_expr(qual, schema) != policy.printed:
                differences.append(f"USING {qual}")
            if _normalize_expr(check, schema) != policy.printed:
                differences.append(f"WITH CHECK {check}")
            if differences:
                why = f"policy {polname} on {table} differs: {'; '.join(differences)}"
                plan.append(Statement(qualified, f"DROP POLICY {quoted} ON {qualified}", why))
                plan.append(Statement(qualified, _create_policy(policy, qualified, fn, tables), ""))
        for policy in declared.values():
            gone = (qualified, policy.name) in cascaded
            why = f"uses {fn}, which is recreated" if gone else "does not exist"
            plan.append(
                Statement(
                    qualified,
                    _create_policy(policy, qualified, fn, tables),
                    f"policy {policy.name} on {table} {why}",
                )
            )

    # RLS on, and forced: the table owner is subject to the policies too
    for table in RLS_TABLES:
        qualified = tables[table]
        enabled, forced = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = to_regclass(%s)",
            (qualified,),
        ).fetchone() or (False, False)
        if not enabled:
            plan.append(
                Statement(
                    qualified,
                    f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY",
                    f"row-level security is not enabled on {table}",
                )
            )
        if not forced:
            plan.append(
                Statement(
                    qualified,
                    f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY",
                    f"row-level security is not forced on {table} (its owner bypasses it)",
                )
            )

    plan += _grant_plan(conn, schema, tables, role_exists)
    return plan


_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _create_policy(policy: _Policy, qualified: str, fn: str, tables: dict[str, str]) -> str:
    expression = policy.expression.format(fn=fn, conversations=tables["conversations"])
    return (
        f"CREATE POLICY {policy.name} ON {qualified} AS PERMISSIVE FOR ALL TO {RLS_ROLE} "
        f"USING ({expression}) WITH CHECK ({expression})"
    )


def _grant_plan(
    conn: Conn, schema: str, tables: dict[str, str], role_exists: bool
) -> list[Statement]:
    """Privileges the role needs for the policies to matter: the schema, the tables (no
    TRUNCATE, which ignores row-level security) and their sequences."""

    def lacks(query: str, *params: Any) -> bool:
        return not role_exists or not _scalar(conn, query, (RLS_ROLE, *params))

    plan: list[Statement] = []
    if lacks("SELECT has_schema_privilege(%s, %s::regnamespace::oid, 'USAGE')", schema):
        plan.append(
            Statement(
                schema,
                f"GRANT USAGE ON SCHEMA {schema} TO {RLS_ROLE}",
                f"role {RLS_ROLE} lacks USAGE on schema {schema}",
            )
        )
    for table, qualified in tables.items():
        missing = [
            p
            for p in RLS_PRIVILEGES
            if lacks("SELECT has_table_privilege(%s, %s::regclass, %s)", qualified, p)
        ]
        if missing:
            plan.append(
                Statement(
                    qualified,
                    f"GRANT {', '.join(missing)} ON {qualified} TO {RLS_ROLE}",
                    f"role {RLS_ROLE} lacks {', '.join(missing)} on {table}",
                )
            )
        if role_exists and _scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = %s::regclass AND a.grantee = to_regrole(%s) "
            "AND a.privilege_type = 'TRUNCATE')",
            (qualified, RLS_ROLE),
        ):
            plan.append(
                Statement(
                    qualified,
                    f"REVOKE TRUNCATE ON {qualified} FROM {RLS_ROLE}",
                    f"role {RLS_ROLE} may TRUNCATE {table}, which ignores row-level security",
                )
            )
        for (sequence,) in conn.execute(
            "SELECT format('%%I.%%I', n.nspname, s.relname) FROM pg_depend d "
            "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
            "AND d.refobjid = %s::regclass AND d.deptype IN ('a', 'i') ORDER BY 1",
            (qualified,),
        ).fetchall():
            if lacks("SELECT has_sequence_privilege(%s, %s::regclass, 'USAGE')", sequence):
                plan.append(
                    Statement(
                        sequence,
                        f"GRANT USAGE ON SEQUENCE {sequence} TO {RLS_ROLE}",
                        f"role {RLS_ROLE} lacks USAGE on sequence {sequence}",
                    )
                )
    return plan


def rls_drift(conn: Conn) -> list[str]:
    """How row-level security on conversations and messages differs from its declared state."""
    return [st.reason for st in _rls_plan(conn) if st.reason]


def converge_rls(conn: Conn, log: Log | None = None) -> ConvergeReport:
    """Bring row-level security to its declared state, in one transaction.

    - role ``authenticated_users``: NOLOGIN (the API's login role is made a member of it),
      not superuser, no BYPASSRLS;
    - ``current_user_id()``: reads ``app.current_user_id`` (which the API sets per request or
      transaction) and returns it as the type of ``users.id``; NULL when unset or empty, so an
      API session that forgot to set it sees no row. A value that is not an id raises an error
      instead of matching nothing silently. STABLE, ``CREATE OR REPLACE`` only when its
      definition differs (a different return type means DROP ... CASCADE, then the policies
      are recreated in the same transaction);
    - RLS enabled and forced on conversations and messages;
    - the spec's policies, each with a ``WITH CHECK`` equal to its ``USING``, so a user cannot
      write rows for someone else either. Policies not declared here are dropped: one extra
      permissive policy would open the tables. A policy that differs (command, kind, roles,
      expressions as printed by the server) is dropped and recreated;
    - SELECT, INSERT, UPDATE, DELETE on both tables and USAGE on their sequences, granted last.

    Superusers and roles with BYPASSRLS are never subject to row-level security. FORCE makes the
    tables' owner subject to it: with no policy for the owner, it sees no row, so migrations and
    ``pg_dump`` must run as a superuser or a BYPASSRLS role.
    """
    return converge_plan(conn, _rls_plan, log)
