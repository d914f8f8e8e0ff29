"""PostgreSQL server settings as declared state: desired values, the live server, converge, drift.

The specification's ``production-setup.sql`` sets fixed values with ``ALTER SYSTEM`` once. Here
the values come from the declared instance through PGTune's "web application" formulas; the
server is changed only where it differs. With ``ALTER SYSTEM``, settings that only a restart
applies are reported, never applied by restarting the server; on CloudNativePG the operator
restarts the instances itself, one at a time. One module per responsibility:

- :mod:`~twinme_ops.database.postgres.settings.declared`: the desired values (the instance's
  resources, the formulas, the specification's instance and logging), and the settings this tool
  refuses to manage (``shared_preload_libraries``).
- :mod:`~twinme_ops.database.postgres.settings.values`: setting values compared as PostgreSQL
  stores them (units, booleans, enumerations) and shown as a person reads them.
- :mod:`~twinme_ops.database.postgres.settings.live`: reading the server (``pg_settings``, the
  configuration files), and the errors of the settings steps.
- :mod:`~twinme_ops.database.postgres.settings.drift`: what each setting needs, and the drift
  check.
- :mod:`~twinme_ops.database.postgres.settings.converge`: ``ALTER SYSTEM`` what differs, reload
  once, report what waits for a restart.
- :mod:`~twinme_ops.database.postgres.settings.cnpg` (and ``cnpg_api``): on CloudNativePG, which
  refuses ``ALTER SYSTEM``, patch the Cluster's ``spec.postgresql.parameters`` and wait for the
  operator's rollout.
- :mod:`~twinme_ops.database.postgres.settings.applier`: one declared state, two appliers: the
  resource that picks ``ALTER SYSTEM`` or the Cluster (``TWINME_POSTGRES_APPLIER``).

Extensions are in :mod:`twinme_ops.database.postgres.extensions`. No Dagster in this package.
"""
