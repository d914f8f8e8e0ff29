"""What to do about a libpq failure: the one mapping from PostgreSQL's error text to a fix, shared
by the connections, pg_dump and pg_restore (each adds the cases only it meets)."""

from __future__ import annotations


def libpq_fix(message: str, *, credentials: str, database: str = "") -> str | None:
    """The fix for a failure every PostgreSQL client meets, or ``None`` for any other failure.

    ``credentials`` says where the user and password come from (e.g. ``"in DATABASE_URL"``),
    ``database`` where the database name does (the case is skipped when empty).
    """
    text = message.lower()
    if "password authentication failed" in text or "no password supplied" in text:
        return f"check the user and password {credentials}"
    if database and "does not exist" in text and "database" in text:
        return f"check the database name {database}"
    return None
