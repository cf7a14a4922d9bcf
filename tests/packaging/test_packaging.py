"""The project as a user installs it: wheel, fresh venv, twistd plugin, no reactor.

These tests build a wheel from a clean copy of the source tree, install it
(and its dependencies, from PyPI) into a brand-new virtual environment that
does not see this one's site-packages, and then check what only an installed
copy can show:

* ``twistd --help`` lists the ``gateway`` plugin and ``twistd gateway --help``
  documents ``--config``: the dropin ``twisted/plugins/gateway_plugin.py`` is
  shipped and found;
* importing every module of the ``gateway`` package (and the dropin) installs
  no reactor (ARCHITECTURE.md: the reactor is imported only inside
  ``gateway.tap.makeService``), and needs nothing beyond ``install_requires``;
* the wheel holds the dropin and no ``twisted/__init__.py`` nor
  ``twisted/plugins/__init__.py``, which would shadow Twisted itself;
* the editable install the suite itself runs in (``scripts/bootstrap``) also
  exposes the plugin, which setuptools' default editable mode would not.

Every subprocess runs from an empty directory and without PYTHONPATH, so that
nothing is found through the current directory by accident.  The fresh venv
is built once per module (about 30-60 s, most of it pip); deselect these
tests with ``-m "not packaging"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]

# What a clean checkout would not have (mirrors .gitignore): never build from it.
_JUNK_AT_ROOT = {".git", ".venv", "build", "dist", "var", "certs", "bench"}
_JUNK_ANYWHERE = {"__pycache__", ".pytest_cache", ".hypothesis", "dropin.cache"}


def _ignore_junk(directory: str, names: list[str]) -> set[str]:
    at_root = Path(directory).resolve() == REPO
    return {
        n for n in names
        if n in _JUNK_ANYWHERE
        or (at_root and n in _JUNK_AT_ROOT)
        or n.endswith((".egg-info", ".pyc", ".pid", ".log", ".so"))
    }


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(args: list[object], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its whole output if it fails."""
    argv = [str(a) for a in args]
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout} s: {' '.join(argv)}\n{e.stdout or ''}{e.stderr or ''}")
    if proc.returncode != 0:
        pytest.fail(
            f"exit status {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _commands_listed(help_text: str) -> set[str]:
    """The plugin names under "Commands:" in twistd's or twist's --help."""
    _, _, commands = help_text.partition("Commands:")
    return set(re.findall(r"^ {2,8}(\S+)\s", commands, re.MULTILINE))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("packaging")


@pytest.fixture(scope="module")
def empty_cwd(workdir) -> Path:
    path = workdir / "cwd"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def wheel(workdir, empty_cwd) -> Path:
    # Build from a clean copy: building in the checkout would leave build/ and
    # *.egg-info there, and setuptools packs stale files it finds in build/.
    source = workdir / "source"
    shutil.copytree(REPO, source, ignore=_ignore_junk, symlinks=True)
    out = workdir / "wheelhouse"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, source],
         cwd=empty_cwd, timeout=600)
    wheels = sorted(out.glob("gateway-*.whl"))
    assert len(wheels) == 1, f"expected one gateway wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(workdir, empty_cwd, wheel) -> Path:
    """A fresh venv (no system site-packages) with the wheel and its dependencies."""
    path = workdir / "venv"
    _run([sys.executable, "-m", "venv", path], cwd=empty_cwd, timeout=300)
    _run([_bin(path, "python"), "-m", "pip", "install", "--quiet", wheel], cwd=empty_cwd, timeout=900)
    return path


# (c) ------------------------------------------------------------------------

def test_wheel_ships_the_dropin_without_shadowing_twisted(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()

    assert "twisted/plugins/gateway_plugin.py" in names
    assert "twisted/__init__.py" not in names, "would shadow the twisted package"
    assert "twisted/plugins/__init__.py" not in names, "would shadow twisted.plugins"
    # Under twisted/ the wheel holds the dropin and nothing else (no dropin.cache).
    assert sorted(n for n in names if n.startswith("twisted/")) == ["twisted/plugins/gateway_plugin.py"]

    assert "gateway/__init__.py" in names
    assert "gateway/tap.py" in names
    top_level = {n.split("/", 1)[0] for n in names}
    extra = {t for t in top_level - {"gateway", "twisted"}
             if not t.endswith(".dist-info") and not t.startswith("gateway__mypyc.")}  # (mypyc's shared library)
    assert not extra, f"unexpected top-level entries in the wheel (tests? backends?): {sorted(extra)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


# (a) ------------------------------------------------------------------------

def test_twistd_lists_the_gateway_plugin(venv, empty_cwd):
    out = _run([_bin(venv, "twistd"), "--help"], cwd=empty_cwd, timeout=120).stdout
    assert "gateway" in _commands_listed(out), out


def test_twistd_gateway_help_documents_config(venv, empty_cwd):
    out = _run([_bin(venv, "twistd"), "gateway", "--help"], cwd=empty_cwd, timeout=120).stdout
    assert "--config" in out, out


# (b) ------------------------------------------------------------------------

_IMPORT_EVERYTHING = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys, traceback

    report = {"modules": [], "failures": {}, "reactor_after": None}

    def note_reactor(step):
        if report["reactor_after"] is None and "twisted.internet.reactor" in sys.modules:
            report["reactor_after"] = step

    def try_import(name):
        try:
            importlib.import_module(name)
        except BaseException:
            report["failures"][name] = traceback.format_exc()
        report["modules"].append(name)
        note_reactor("import " + name)

    try_import("gateway")
    import gateway
    report["gateway_file"] = gateway.__file__
    report["prefix"] = sys.prefix
    try_import("gateway.http.server")
    report["server_file"] = sys.modules["gateway.http.server"].__file__

    def on_walk_error(name):
        report["failures"][name] = traceback.format_exc()

    try:
        for info in pkgutil.walk_packages(gateway.__path__, "gateway.", onerror=on_walk_error):
            try_import(info.name)
    except BaseException:
        report["failures"]["<pkgutil.walk_packages>"] = traceback.format_exc()

    # The dropin, and what twistd does with it up to (not including) makeService.
    try_import("twisted.plugins.gateway_plugin")
    try:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "gateway"]
        assert len(makers) == 1, makers
        makers[0].options()
    except BaseException:
        report["failures"]["<gateway ServiceMaker>"] = traceback.format_exc()
    note_reactor("twistd plugin discovery and gateway Options()")

    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def import_report(venv, empty_cwd) -> dict:
    out = _run([_bin(venv, "python"), "-c", _IMPORT_EVERYTHING], cwd=empty_cwd, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_imports_come_from_the_installed_wheel(import_report, venv):
    gateway_file = Path(import_report["gateway_file"]).resolve()
    assert Path(import_report["prefix"]).resolve() == venv.resolve()
    assert venv.resolve() in gateway_file.parents, gateway_file
    assert REPO not in gateway_file.parents, gateway_file


def test_the_wheel_holds_the_compiled_request_path(wheel, import_report):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    from gateway.compiled import COMPILED_MODULES

    for module in COMPILED_MODULES:
        path = module.replace(".", "/")
        assert f"{path}.py" in names  # (the source stays: the fallback, and what tracebacks show)
        assert [n for n in names if n.startswith(f"{path}.cpython-") and n.endswith(".so")], module
    assert [n for n in names if n.startswith("gateway__mypyc.") and n.endswith(".so")]
    assert import_report["server_file"].endswith(".so"), import_report["server_file"]


def test_every_gateway_module_imports_with_only_install_requires(import_report):
    assert "gateway.tap" in import_report["modules"]
    failures = import_report["failures"]
    assert not failures, "\n".join(f"--- {name} ---\n{tb}" for name, tb in failures.items())


def test_importing_gateway_installs_no_reactor(import_report):
    assert import_report["reactor_after"] is None, (
        f"twisted.internet.reactor got imported/installed after: {import_report['reactor_after']} "
        "(import the reactor inside gateway.tap.makeService only)"
    )


# (d) ------------------------------------------------------------------------

def _require_editable_install():
    from importlib import metadata

    try:
        metadata.distribution("gateway")
    except metadata.PackageNotFoundError:
        pytest.skip(f"gateway is not installed in {sys.prefix}: run the suite with scripts/test")


def test_editable_install_exposes_the_plugin_to_twist(empty_cwd):
    _require_editable_install()
    out = _run([sys.executable, "-m", "twisted", "--help"], cwd=empty_cwd, timeout=120).stdout
    assert "gateway" in _commands_listed(out), (
        "the editable install hides the dropin: reinstall with "
        "pip install -e '.[test]' --config-settings editable_mode=compat (scripts/bootstrap)\n" + out
    )


def test_editable_install_exposes_the_plugin_to_twistd(empty_cwd):
    _require_editable_install()
    twistd = Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        pytest.skip(f"no twistd next to {sys.executable}")
    out = _run([twistd, "--help"], cwd=empty_cwd, timeout=120).stdout
    assert "gateway" in _commands_listed(out), out
