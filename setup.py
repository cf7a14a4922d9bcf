"""Builds the request path (gateway.compiled.COMPILED_MODULES) to C with mypyc, when it can.

Everything else is in setup.cfg.  Without a C compiler, or with
``GATEWAY_PURE_PYTHON=1`` set, the package is built as pure Python (slower,
the same behaviour): a failed compilation is reported, not fatal.
"""

import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

MODULES = runpy.run_path(os.path.join("gateway", "compiled.py"))["COMPILED_MODULES"]


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python when the extensions cannot be compiled.

    All or nothing (see gateway/compiled.py): after a failure, whatever was
    built is removed.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # (CompileError, a missing compiler or Python headers...)
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            print(f"gateway: could not compile the request path ({error}); installing it as pure Python, "
                  "which is slower (README: Install)", file=sys.stderr)


def compiled_extensions() -> list:
    if os.environ.get("GATEWAY_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify  # (mypy is in pyproject.toml's build requirements)

    paths = [os.path.join(*module.split(".")) + ".py" for module in MODULES]
    return mypycify(paths, opt_level="3", group_name="gateway")


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
