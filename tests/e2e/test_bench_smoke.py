"""The benchmark (bench/) still runs: a 2-second smoke, never a timed test.

``bench/bench.py --smoke`` measures the gateway alone for 2 seconds, with
nginx and wrk when they are installed and a Twisted upstream and a Python
client otherwise; it exits non-zero on any error.  Only that it works is
checked here, not how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs_and_writes_results(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "bench.py"), "--smoke", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    [result] = results["results"]
    assert (result["scenario"], result["proxy"]) == ("http-c50", "gateway")
    assert result["rps"] > 0 and result["errors"] == {}
    assert "| http-c50 | gateway |" in (tmp_path / "results.md").read_text()
