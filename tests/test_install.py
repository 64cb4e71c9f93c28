"""A new user's installs, each into a fresh venv: the built wheel, a machine without a C compiler, and
an editable checkout that mypy must see from the user's own directory.

Slow (venvs, isolated builds, one compile), so marked `install`: CI runs them once, in its compiled
run. They build from a copy of the checkout without its build outputs (a stale rstream/_fast.c or
compiled module would hide a broken build), and they install through the machine's pip
configuration, as `pip install -e '.[test]'` does, for redis, hiredis and the build requirements
(setuptools, Cython). Every probe runs outside any checkout, so it imports the installed package.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import rstream

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parents[1]
# What a clean clone does not have (see .gitignore).
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "*.so", "_fast.c", "__pycache__", ".*cache",
    ".hypothesis", ".benchmarks", "results",
)
# Settings of the caller's shell that would change what gets built or imported.
CALLER_SETTINGS = ("RSTREAM_NO_EXTENSIONS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MYPYPATH")
NO_COMPILER = "/nonexistent/cc"
WARNING = "WARNING: rstream: could not compile the Cython hot path"
VERSION_LINE = f"rstream {rstream.__version__}"

# Decodes an XREADGROUP reply (one entry, one deleted) with whichever hot path loaded, and reports
# where everything came from.
PROBE = r"""
import json, sys
import rstream, rstream._hotpath as h

(stream, entries), = h.decode_read_reply([[b"orders", [[b"1-1", [b"sku", b"42"]], [b"1-2", None]]]])
messages, deleted = h.decode_entries(entries, "orders", 3)
print(json.dumps({
    "rstream": rstream.__file__,
    "prefix": sys.prefix,
    "compiled": h.COMPILED,
    "implementation": h.IMPLEMENTATION,
    "decoder": h.decode_entries.__module__,
    "decoded": [[m.id, m.stream, {k.decode(): v.decode() for k, v in m.fields.items()}, m.attempt] for m in messages],
    "deleted": deleted,
}))
"""
DECODED = [["1-1", "orders", {"sku": "42"}, 3]]


def clean_env(**settings: str) -> Dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CALLER_SETTINGS}
    env.update(settings)
    return env


def run(args: List[Any], cwd: Path, timeout: float, **settings: str) -> str:
    """Runs a command to success and returns its output, stdout and stderr together."""
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=clean_env(**settings), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout[-6000:]}"
    return result.stdout


def copy_checkout(where: Path) -> Path:
    source = where / "rstream-src"
    shutil.copytree(REPO, source, ignore=NOT_IN_A_CLONE)
    return source


def fresh_venv(where: Path, *, with_pip: bool = False) -> Path:
    """A new venv's python. Without pip, `pip_into` installs into it with this interpreter's pip
    (seconds instead of ensurepip's many)."""
    venv = where / "venv"
    run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), venv], where, 120)
    return venv / "bin" / "python"


def pip_into(python: Path, *args: Any, **settings: str) -> str:
    return run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-cache-dir", *args],
        python.parents[2], 240, **settings,
    )


def probe(python: Path) -> Dict[str, Any]:
    result: Dict[str, Any] = json.loads(run([python, "-c", PROBE], python.parents[2], 60))
    return result


def probe_installed(python: Path) -> Dict[str, Any]:
    """`probe` where rstream must come from the venv's site-packages, not from a checkout."""
    result = probe(python)
    assert Path(result["rstream"]).is_relative_to(result["prefix"]), result["rstream"]
    return result


def version_line(python: Path) -> str:
    return run([python, "-m", "rstream", "--version"], python.parents[2], 60).strip()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, Path]:
    """`python -m build` as a new user runs it: sdist, then the wheel from the sdist, in a fresh venv
    with pip and `build` only. Gives (venv python, sdist, wheel)."""
    where = tmp_path_factory.mktemp("built")
    source = copy_checkout(where)
    python = fresh_venv(where, with_pip=True)
    run([python, "-m", "pip", "install", "--no-cache-dir", "build"], where, 300)
    run([python, "-m", "build", "--outdir", where / "dist", source], where, 280)
    (sdist,) = (where / "dist").glob("*.tar.gz")
    (wheel,) = (where / "dist").glob("*.whl")
    return python, sdist, wheel


def test_built_wheel_installs_with_the_compiled_hot_path(built: Tuple[Path, Path, Path]) -> None:
    """The wheel carries the compiled module, the typing marker and the stubs, installs into a fresh
    venv with its dependencies, and there loads the compiled hot path and runs the command line."""
    python, _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert any(name.startswith("rstream/_fast.") and name.endswith(".so") for name in names), names
    assert {"rstream/py.typed", "rstream/_fast.pyi", "rstream/_fast_py.py", "rstream/cli/__init__.py"} <= names
    assert not any(name.endswith(".c") for name in names), "generated C in the wheel"

    pip_into(python, wheel)
    found = probe_installed(python)
    assert found["compiled"] is True, found
    assert (found["implementation"], found["decoder"]) == ("cython", "rstream._fast")
    assert (found["decoded"], found["deleted"]) == (DECODED, ["1-2"])
    assert version_line(python) == VERSION_LINE
    console_script = python.parent / "rstream"
    assert run([console_script, "--version"], python.parents[2], 60).strip() == VERSION_LINE


def test_sdist_holds_what_a_build_needs(built: Tuple[Path, Path, Path]) -> None:
    """The sdist (what pip builds where no wheel fits) has the Cython source, the build script and the
    typing marker; the test below builds it on a machine without a compiler."""
    _, sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"setup.py", "pyproject.toml", "README.md", "rstream/_fast.pyx", "rstream/py.typed"} <= names


def test_without_a_compiler_pip_install_warns_and_uses_pure_python(
    built: Tuple[Path, Path, Path], tmp_path: Path,
) -> None:
    """From the sdist on a machine whose C compiler is missing, `pip install` still succeeds: the build
    prints the warning (shown by `pip install -v`), and rstream runs on the pure-Python hot path."""
    _, sdist, _ = built
    python = fresh_venv(tmp_path)
    output = pip_into(python, "-v", sdist, CC=NO_COMPILER)
    assert WARNING in output, output[-6000:]
    warning_line = next(line for line in output.splitlines() if WARNING in line)
    assert NO_COMPILER in warning_line and "No such file or directory" in warning_line, warning_line
    assert "installing the pure-Python one" in output

    found = probe_installed(python)
    assert found["compiled"] is False, found
    assert (found["implementation"], found["decoder"]) == ("python", "rstream._fast_py")
    assert (found["decoded"], found["deleted"]) == (DECODED, ["1-2"])
    installed = Path(found["rstream"]).parent
    assert not list(installed.glob("_fast*.so")), "a compiled module was installed after all"
    assert version_line(python) == VERSION_LINE


def test_editable_install_is_visible_to_mypy_from_another_directory(tmp_path: Path) -> None:
    """A plain `pip install -e <checkout>` is found by mypy --strict checking the user's own code in
    their own directory: the public API's real types, not a missing module.

    Built with RSTREAM_NO_EXTENSIONS=1: what mypy sees does not depend on the compiled module.
    """
    source = copy_checkout(tmp_path)
    python = fresh_venv(tmp_path)
    pip_into(python, "-e", source, RSTREAM_NO_EXTENSIONS="1")
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text(
        "import rstream\n\n"
        "reveal_type(rstream.Consumer)\n"
        "consumer: rstream.Consumer = rstream.Consumer('redis://localhost', 'orders', 'billing')\n"
    )
    output = run(
        [sys.executable, "-m", "mypy", "--strict", "--python-executable", python,
         "--cache-dir", tmp_path / "mypy-cache", "main.py"],
        app, 180,
    )
    assert "-> rstream.consumer.Consumer" in output, output
    assert "Success: no issues found" in output, output
    found = probe(python)
    assert found["rstream"] == str(source / "rstream" / "__init__.py")
    assert (found["decoded"], found["deleted"]) == (DECODED, ["1-2"])
