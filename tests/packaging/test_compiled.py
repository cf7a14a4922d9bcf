"""The compiled request path (gateway.compiled): in use here, and the pure-Python fallback.

scripts/bootstrap's editable install compiles the modules of
``gateway.compiled.COMPILED_MODULES`` in place (setup.py, mypyc), so the
whole suite runs against them; these tests check that it does, that
``GATEWAY_PURE_PYTHON=1`` and a stale compiled module switch to the ``.py``
files, and that the protocol and unit tests also pass on those.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import compiled

REPO = Path(__file__).resolve().parents[2]
PURE = bool(os.environ.get("GATEWAY_PURE_PYTHON"))
_WHERE_IS_THE_SERVER = "import gateway.http.server as m, gateway.compiled as c; print(m.__file__, c.in_use())"


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_PURE_PYTHON", "PYTHONPATH")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=120, check=True)


@pytest.mark.skipif(PURE, reason="GATEWAY_PURE_PYTHON is set: this run is the pure-Python one")
def test_the_suite_runs_the_compiled_request_path():
    import gateway.http.server  # noqa: F401  (what the rest of the suite imports)

    assert compiled.in_use(), "scripts/bootstrap did not compile the request path (see .venv/.gateway-bootstrap.log)"
    for module in compiled.COMPILED_MODULES:
        __import__(module)
        assert sys.modules[module].__file__.endswith(".so"), module


def test_gateway_pure_python_runs_the_sources(tmp_path):
    out = _python(_WHERE_IS_THE_SERVER, tmp_path, GATEWAY_PURE_PYTHON="1").stdout.split()
    assert out == [str(REPO / "gateway" / "http" / "server.py"), "False"]


def test_a_stale_compiled_module_makes_the_sources_run_with_a_warning(tmp_path):
    if not any((REPO / "gateway" / "http").glob("server.*.so")):
        pytest.skip("nothing compiled in this checkout")
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(REPO / "setup.py", copy)
    for path in REPO.glob("gateway__mypyc.*.so"):
        shutil.copy(path, copy)
    shutil.copytree(REPO / "gateway", copy / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    fresh = _python(_WHERE_IS_THE_SERVER, copy, PYTHONPATH=str(copy))
    assert fresh.stdout.split()[1] == "True" and fresh.stdout.split()[0].endswith(".so")

    later = time.time() + 10
    os.utime(copy / "gateway" / "http" / "proxy.py", (later, later))  # edited after the build
    stale = _python(_WHERE_IS_THE_SERVER, copy, PYTHONPATH=str(copy))
    assert stale.stdout.split() == [str(copy / "gateway" / "http" / "server.py"), "False"]
    assert "gateway.http.proxy changed after it was compiled" in stale.stderr


@pytest.mark.skipif(PURE, reason="this is that run")
def test_the_unit_and_protocol_tests_pass_on_the_pure_python_modules():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit",
                           "tests/protocol", "tests/packaging/test_compiled.py"],
                          cwd=REPO, env={**os.environ, "GATEWAY_PURE_PYTHON": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
