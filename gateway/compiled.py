"""Which modules are compiled to C with mypyc, and running without them.

The request path (the modules in :data:`COMPILED_MODULES`) is plain,
type-annotated Python that ``setup.py`` also compiles with mypyc when the
package is built: the same code, run as C, spends less than half the
user-space CPU per proxied request; the kernel's share is unchanged (README,
"Performance").  Python imports a compiled module
(``server.cpython-311-x86_64-linux-gnu.so``) in preference to its ``.py``.

The ``.py`` files stay the source and the fallback:

- without a C compiler (or with ``GATEWAY_PURE_PYTHON=1`` at build time),
  nothing is compiled and the ``.py`` files are what runs;
- with ``GATEWAY_PURE_PYTHON=1`` at run time, :func:`use_sources_if_needed`
  makes the ``.py`` files run even where compiled modules are present;
- in a source checkout (an editable install), a compiled module older than
  its ``.py`` was built from other code: then the ``.py`` files run, with a
  warning, until it is rebuilt (``scripts/bootstrap`` does that).

It is all or nothing: the compiled modules call one another directly in C,
so a compiled module and the ``.py`` of another would not fit together.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from typing import Sequence

#: The modules compiled by setup.py (with the mypy settings of setup.cfg).
COMPILED_MODULES = (
    "gateway.core.accesslog",
    "gateway.core.balancing",
    "gateway.core.headers",
    "gateway.core.messages",
    "gateway.core.pool",
    "gateway.core.retry",
    "gateway.core.routing",
    "gateway.core.validation",
    "gateway.http.client",
    "gateway.http.clock",
    "gateway.http.connections",
    "gateway.http.flow",
    "gateway.http.proxy",
    "gateway.http.sending",
    "gateway.http.server",
    "gateway.http.tls_transport",
    "gateway.http.tunnel",
    "gateway.reactor_events",
)

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _source_path(module: str) -> str:
    return os.path.join(_PACKAGE_ROOT, *module.split(".")) + ".py"


def _compiled_path(module: str) -> str | None:
    directory, _, name = _source_path(module)[:-3].rpartition(os.sep)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(directory, name + suffix)
        if os.path.exists(path):
            return path
    return None


def stale_modules() -> list[str]:
    """In a source checkout, the compiled modules whose ``.py`` changed after they were built."""
    if not os.path.exists(os.path.join(_PACKAGE_ROOT, "setup.py")):
        return []  # installed from a wheel: the files' times say nothing
    stale = []
    for module in COMPILED_MODULES:
        compiled = _compiled_path(module)
        if compiled is not None and os.path.getmtime(_source_path(module)) > os.path.getmtime(compiled):
            stale.append(module)
    return stale


class _SourcesFirst(MetaPathFinder):
    """Finds the compiled modules' ``.py`` files, before the compiled ones can be found."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: object = None) -> ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _source_path(fullname))


def use_sources_if_needed() -> None:
    """Run the ``.py`` files when asked to (``GATEWAY_PURE_PYTHON``) or when a compiled module is stale."""
    if any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        return
    if os.environ.get("GATEWAY_PURE_PYTHON"):
        sys.meta_path.insert(0, _SourcesFirst())
        return
    stale = stale_modules()
    if stale:
        print(f"gateway: {', '.join(stale)} changed after it was compiled: running the pure-Python modules "
              "(slower) until they are rebuilt (scripts/bootstrap, or pip install again)", file=sys.stderr)
        sys.meta_path.insert(0, _SourcesFirst())


def in_use() -> bool:
    """Whether the request path runs compiled (call once the gateway's modules are imported)."""
    module = sys.modules.get("gateway.http.server")
    return module is not None and not (module.__file__ or "").endswith(".py")
