"""Every benchmark runs, in its short form: a benchmark that no longer runs cannot rot unseen.

Each one is started as an operator starts it, ``python -m bench.<name> --quick``, in its own
process from the repository root: the quick form goes through the whole code path of the full
benchmark (same servers, same job, same raw baseline) on small inputs and few rounds, exits 0 only
if everything it timed succeeded, and prints the same report with its ratios. The figures of a
quick run mean nothing; that they are there means the benchmark still works.

The backup and restore benchmarks share one ``--home`` (their sandbox, seeded once, and the
backup set the restore benchmark drills), stopped at the end of the module; their JSON results go
to a temporary directory (``TWINME_BENCH_RESULTS``), not to ``bench/results/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinme_ops.sandbox.servers import stop_sandbox

REPO = Path(__file__).resolve().parents[1]
# a ratio as the reports print it: 1.05x, 0.92x
RATIO = r"\d+(?:\.\d+)?x"
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def bench_home(server_tmp_root: Path) -> Iterator[Path]:
    """``--home`` of the backup and restore benchmarks; its sandbox is stopped afterwards."""
    home = Path(tempfile.mkdtemp(prefix="bench-home-", dir=server_tmp_root))
    home.chmod(0o755)  # the PostgreSQL system user must traverse it
    try:
        yield home
    finally:
        stop_sandbox(home)


def run_bench(name: str, results: Path, *args: str) -> str:
    """``python -m bench.<name> --quick *args`` from the repository root; returns its output.

    The benchmark gets this environment without the variables that would point it at other
    servers, a store or a Slack webhook than its own.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TWINME_", "DAGSTER_", "DATABASE_", "REDIS_"))
        and key not in ("SLACK_WEBHOOK_URL", "KUBECONFIG", "AWS_ENDPOINT_URL_S3")
    }
    env["TWINME_BENCH_RESULTS"] = str(results)
    argv = [sys.executable, "-m", f"bench.{name}", "--quick", *args]
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, (
        f"{' '.join(argv[1:])} exited with {proc.returncode} after {elapsed:.0f} s:\n"
        + output[-6000:]
    )
    print(f"{' '.join(argv[1:])}: {elapsed:.0f} s")
    (written,) = results.glob(f"{name}-*.json")  # its figures were written, once
    assert written.read_text().strip().startswith("{")
    return proc.stdout


def ratio_lines(output: str) -> list[str]:
    """The report's lines that state a ratio."""
    return [line for line in output.splitlines() if re.search(rf"\b{RATIO}\b", line)]


def test_release_bench_quick(tmp_path: Path) -> None:
    output = run_bench("release", tmp_path)
    for pattern in (
        rf"release_job \d+\.\d s vs direct steps \d+\.\d s: {RATIO} \(goal <= 1\.1x\), of "
        r"which \d+\.\d+ s outside the steps",
        rf"without the image build .*: \d+\.\d s vs \d+\.\d s, {RATIO}",
        r"sensor tick \d+ ms, so push-to-run <= 30 s",
    ):
        assert re.search(pattern, output), output[-3000:]
    assert '"quick": true' in output


def test_backup_bench_quick(tmp_path: Path, bench_home: Path) -> None:
    output = run_bench("backup", tmp_path, "--home", str(bench_home))
    lines = ratio_lines(output)
    assert any("raw" in line for line in lines), output[-3000:]


def test_restore_bench_quick(tmp_path: Path, bench_home: Path) -> None:
    output = run_bench("restore", tmp_path, "--home", str(bench_home))
    lines = ratio_lines(output)
    assert any("raw" in line for line in lines), output[-3000:]


def test_load_bench_quick(tmp_path: Path) -> None:
    output = run_bench("load", tmp_path)
    for name in ("import dagster", "load", "definitions validate"):
        assert re.search(rf"^{name}: min \d+\.\d\d s, median \d+\.\d\d s, {RATIO}", output, re.M)
    assert re.search(rf"load the code location: {RATIO} import dagster \(goal < 2x", output)


def test_pitr_restore_bench_quick(tmp_path: Path) -> None:
    output = run_bench("pitr_restore", tmp_path)
    for label in ("random target", "latest"):
        assert re.search(
            rf"^{label}: ours \d+\.\d+ s \(pg_combinebackup .* vs raw \d+\.\d+ s \(cp -a .*"
            rf"{RATIO} ours/raw",
            output,
            re.MULTILINE,
        ), output[-3000:]


def test_archive_lag_bench_quick(tmp_path: Path) -> None:
    output = run_bench("archive_lag", tmp_path)
    assert re.search(r"^ours \(pg_receivewal --synchronous\): RPO p50/p95/max ", output, re.M)
    assert re.search(r"^raw \(archive_command, archive_timeout=2\): RPO p50/p95/max ", output, re.M)
    assert re.search(rf"^RPO ours/raw: p95 {RATIO}, max {RATIO}", output, re.M), output[-3000:]


def test_encryption_bench_quick(tmp_path: Path) -> None:
    output = run_bench("encryption", tmp_path)
    for scheme in ("none", "aes-256-gcm", "age"):
        assert re.search(rf"^{scheme}: write [\d,.]+ MiB/s .* read [\d,.]+ MiB/s", output, re.M)
