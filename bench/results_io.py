"""Shared by the benchmarks: print the figures and keep them in bench/results/.

``TWINME_BENCH_RESULTS`` names another directory for them (tests/test_bench.py keeps its quick
runs out of bench/results/ that way).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def report(name: str, results: dict[str, Any], summary: str) -> Path:
    """Print ``results`` and ``summary``; write them to ``bench/results/<name>-<stamp>.json``."""
    print(json.dumps(results, indent=2))
    print(f"\n{summary}", flush=True)
    out_dir = Path(os.environ.get("TWINME_BENCH_RESULTS") or Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    return path
