"""Where runs and sensor ticks write their logs: Dagster text locally, JSON lines in production."""
