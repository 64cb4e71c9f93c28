"""Build the Cython hot path (rstream/_fast.pyx); everything else is in pyproject.toml.

The extension is optional, as in yarl and propcache: where it cannot be compiled (no C compiler, no
Python headers) the build prints a WARNING and goes on, and `rstream._hotpath` then selects the
pure-Python reference `rstream._fast_py`, so `pip install` succeeds anywhere CPython runs.
``RSTREAM_NO_EXTENSIONS=1`` skips the extension altogether (and Cython with it).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

# The errors of a machine that cannot compile, not of a mistake in this file: the compiler or linker
# failed (a missing Python.h is a CompileError), could not be run (no gcc on PATH, CC=/bin/false), or
# none exists for the platform (MSVC absent on Windows).
COMPILE_FAILURES = (CCompilerError, ExecError, PlatformError)

WARNING = """
********************************************************************************
WARNING: rstream: could not compile the Cython hot path ({error});
installing the pure-Python one, about 5x slower at decoding (same behaviour).
Install a C compiler and the Python headers, then reinstall to get the compiled one
(pip install --force-reinstall --no-cache-dir ...). To check which one loaded:
    python -c "import rstream._hotpath as h; print(h.IMPLEMENTATION)"
********************************************************************************
"""


class OptionalBuildExt(build_ext):
    """Turns a failed compile of the hot path into a warning: pure Python is a working install."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except COMPILE_FAILURES as error:
            print(WARNING.format(error=error), file=sys.stderr, flush=True)


ext_modules = []
if os.environ.get("RSTREAM_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    (fast,) = cythonize(
        [Extension("rstream._fast", ["rstream/_fast.pyx"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
        },
    )
    # Optional also makes setuptools skip copying the missing module in an in-place or editable
    # build rather than fail there. Set after cythonize, which does not carry the flag over.
    fast.optional = True
    ext_modules = [fast]

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
