"""Capacity planning: growth of the database, Redis, file storage and backup sets, read from the
nightly sets' manifests, and when a limit (a volume, Redis's maxmemory, the backup window) will
be reached. Dagster-free; ``defs/capacity/`` reads the store and reports."""
