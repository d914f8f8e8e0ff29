"""The specification's indexes as declared state, built without blocking the API.

``CREATE INDEX CONCURRENTLY`` does not block writes, but it cannot run inside a transaction
block and, when it fails, it leaves an INVALID index behind that PostgreSQL keeps maintaining and
never uses: converging requires an autocommit connection, runs each build under ``lock_timeout``
and ``statement_timeout``, and repairs INVALID indexes left by an earlier failure.

The vector index is HNSW by default. ivfflat is built only on a table with embeddings: its
``lists`` are k-means centroids trained on the rows present at build time, so an ivfflat index
built on an empty table is useless. Asked for ivfflat on an empty table, we build HNSW instead
(it needs no training and stays good as rows arrive) and say so in the report's notes; once the
table has rows, the next run replaces it with ivfflat.

One module per responsibility:

- :mod:`~twinme_ops.database.postgres.indexes.declared`: the indexes we own
  (:class:`IndexSpec`, ``SPEC_INDEXES``), their ``CREATE INDEX``, the vector index's choice.
- :mod:`~twinme_ops.database.postgres.indexes.live`: what the catalog says about an index.
- :mod:`~twinme_ops.database.postgres.indexes.drift`: how an index differs from its
  declaration, and the drift check.
- :mod:`~twinme_ops.database.postgres.indexes.converge`: build, repair and replace,
  concurrently, under timeouts.

Missing tables or columns raise :class:`~twinme_ops.database.postgres.objects.MissingTablesError`
(:func:`~twinme_ops.database.postgres.objects.require_tables`). No Dagster in this package.
"""
