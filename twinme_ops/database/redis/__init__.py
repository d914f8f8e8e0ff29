"""Redis production configuration as declared state: render the template, read the live server,
check drift, converge.

``deploy/redis/production.conf`` is the declared state: a template the password is filled into.
The production file renames ``CONFIG`` away, so the live server is read with ``CONFIG GET`` when
the command exists and with ``INFO`` when it does not; it is changed only through ``CONFIG SET``,
and without ``CONFIG`` nothing is changed and the report says how to apply the file.
``requirepass`` is out of scope everywhere: the password is never read back, compared, set or
logged, and the rendered text is never logged. One module per responsibility, mirroring
:mod:`twinme_ops.database.postgres`:

- :mod:`~twinme_ops.database.redis.template`: filling in the password and overrides, writing the
  rendered file with mode 0600.
- :mod:`~twinme_ops.database.redis.declared`: a config read the way Redis reads it, and the
  settings it declares (``desired_settings``); the error of this package.
- :mod:`~twinme_ops.database.redis.values`: values in the form ``CONFIG GET`` reports them.
- :mod:`~twinme_ops.database.redis.live`: reading a server (``CONFIG GET``, else ``INFO``).
- :mod:`~twinme_ops.database.redis.drift`: the declared settings against a live server.
- :mod:`~twinme_ops.database.redis.converge`: ``CONFIG SET`` what differs, ``CONFIG REWRITE``.

No Dagster in this package: it is plain library code.
"""
