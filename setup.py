"""Build the Cython hot path (rstream/_fast.pyx); everything else is in pyproject.toml."""
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("RSTREAM_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("rstream._fast", ["rstream/_fast.pyx"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
        },
    )

setup(ext_modules=ext_modules)
