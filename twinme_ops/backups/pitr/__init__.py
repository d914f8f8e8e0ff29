"""Continuous archiving and point-in-time recovery with PostgreSQL's own tools (issue 14).

The local engine keeps one *archive root* per source server (:mod:`.layout`):

* ``wal/``: every WAL segment, streamed by ``pg_receivewal`` through a physical replication slot
  (:mod:`.receiver`, supervised as a detached process; :mod:`.status` reads its health);
* ``base/<UTC stamp>/``: full and incremental ``pg_basebackup`` copies, each verified by
  ``pg_verifybackup`` and labelled with the backup it depends on (:mod:`.basebackup`);

:mod:`.source` checks and sets what the source server needs, :mod:`.restore` rebuilds a server at
a point in time (``pg_combinebackup`` + ``restore_command``) on a scratch server, and
:mod:`.heartbeat` writes the commits that prove a restore stopped exactly at its target.

No home-made WAL format, and no Dagster: the assets, sensors and drills call these functions.
"""
