"""Benchmark (not a test): the artifact pipeline with no encryption, AES-256-GCM and age.

    python -m bench.encryption --mib 512     # 512 MiB of dump-like rows, 3 rounds
    python -m bench.encryption --quick       # CI form: 16 MiB, 1 round, same code path

Writes the same semi-compressible rows (like a COPY stream) through ``write_artifact`` (zstd level
3 on all cores, then the scheme, sha256, a local store) and reads them back through
``read_artifact`` (sha256, decryption, decompression), for each scheme in turn, and reports the
median throughput of raw bytes (MiB/s) and the ratio of each scheme to no encryption. age runs
in pyrage (Rust): pull-based, through adapters, and decrypts in a worker thread.
Figures go to ``bench/results/encryption-<stamp>.json`` (or ``$TWINME_BENCH_RESULTS``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from statistics import median

import pyrage

from bench.dump_rows import dump_like
from bench.results_io import report
from twinme_ops.backups.artifacts import read_artifact, write_artifact
from twinme_ops.backups.keys import BackupKeys
from twinme_ops.backups.store.base import BackupStore

MIB = 1 << 20
PIECE = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=None, help="MiB of rows (default 512)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="CI form: 16 MiB, 1 round")
    args = parser.parse_args()
    size = (args.mib or (16 if args.quick else 512)) * MIB
    rounds = args.rounds or (1 if args.quick else 3)
    identity = pyrage.x25519.Identity.generate()
    schemes = {
        "none": BackupKeys(),
        "aes-256-gcm": BackupKeys(aes_key=os.urandom(32)),
        "age": BackupKeys(age_recipients=(str(identity.to_public()),), age_identities=(identity,)),
    }
    # the same bytes for every scheme and round, generated once (generation is not measured)
    data = list(dump_like(size, PIECE))
    times: dict[str, dict[str, list[float]]] = {s: {"write": [], "read": []} for s in schemes}
    stored: dict[str, int] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-encryption-"))
    try:
        store = BackupStore(url=f"file://{root}")
        for _ in range(rounds):
            for scheme, keys in schemes.items():
                name = f"rows.{scheme}.zst"
                start = time.monotonic()
                result = write_artifact(store, "bench", name, iter(data), key=keys)
                times[scheme]["write"].append(time.monotonic() - start)
                stored[scheme] = result.bytes_out
                start = time.monotonic()
                got = 0
                for piece in read_artifact(
                    store,
                    "bench",
                    name,
                    expected_sha256=result.sha256,
                    key=keys,
                    encrypted=result.encryption,
                ):
                    got += len(piece)
                times[scheme]["read"].append(time.monotonic() - start)
                if got != size:
                    print(f"{scheme}: read {got} bytes, wrote {size}")
                    return 1
                store.delete("bench", name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results: dict[str, object] = {"quick": args.quick, "mib": size // MIB, "rounds": rounds}
    lines = []
    base = {op: median(times["none"][op]) for op in ("write", "read")}
    for scheme in schemes:
        figures: dict[str, float] = {"stored_mib": round(stored[scheme] / MIB, 2)}
        for op in ("write", "read"):
            seconds = median(times[scheme][op])
            figures[f"{op}_s"] = round(seconds, 3)
            figures[f"{op}_mib_s"] = round(size / MIB / seconds, 1)
            figures[f"{op}_ratio"] = round(base[op] / seconds, 2)
        results[scheme] = figures
        lines.append(
            f"{scheme}: write {figures['write_mib_s']:,.1f} MiB/s "
            f"({figures['write_ratio']:.2f}x of none), read {figures['read_mib_s']:,.1f} MiB/s "
            f"({figures['read_ratio']:.2f}x of none)"
        )
    report("encryption", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
