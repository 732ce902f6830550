"""The package installs like any package: ``pip install client/python`` and a wheel built
with ``python -m build`` (from its sdist, as ``build`` does), each into a fresh venv, with
no environment variables of ours, imported from outside the checkout.

Every install resolves against a wheelhouse of the build and runtime requirements named in
pyproject.toml, downloaded once per requirement set into the test venv (``pip download``;
pip's ``PIP_NO_INDEX``/``PIP_FIND_LINKS``, which the isolated builds honour too): the
same wheels as from the index, without a dozen index round trips per fresh venv. Marked
``install``, so it can be deselected (``-m 'not install'``) while iterating.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness import PYTHON_DIR

pytestmark = pytest.mark.install

MISSING = "01900000-0000-7000-8000-000000000000"

#: Runs in the fresh venv: the stubs are there and work against a real reinsd.
SMOKE = """
import sys, reins, reins.aio
from reins.proto import tasks_pb2, workers_pb2
assert reins.Client and reins.Worker and reins.aio.AsyncClient and reins.aio.AsyncWorker
try:
    reins.Client(sys.argv[1]).check(sys.argv[2])
except reins.ReinsError as err:
    print(reins.__file__, err.code().name, err.reason)
"""


def requirements() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((PYTHON_DIR / "pyproject.toml").read_text())
    return sorted([*project["build-system"]["requires"], *project["project"]["dependencies"]])


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    reqs = requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    path = Path(sys.prefix) / f"reins-test-wheelhouse-{key}"
    if not (path / ".complete").exists():
        run(sys.executable, "-m", "pip", "download", "-q", "-d", path, *reqs, cwd=PYTHON_DIR)
        (path / ".complete").write_text("\n".join(reqs))
    return path


def clean_env(wheelhouse: Path | None = None) -> dict[str, str]:
    """PATH, HOME and pip's own configuration; nothing of ours (no REINS_*, no PYTHONPATH)."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SSL_CERT_FILE")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
    if wheelhouse is not None:
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse))
    return env


def run(*args: str | Path, cwd: Path, wheelhouse: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=clean_env(wheelhouse), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fresh_venv(path: Path, outside: Path) -> Path:
    # Without pip of its own (ensurepip alone takes seconds): this venv's pip installs
    # into it (`pip --python`). Nothing else is in it.
    run(sys.executable, "-m", "venv", "--without-pip", path, cwd=outside)
    return path / "bin" / "python"


def pip_install(python: Path, target: Path, outside: Path, wheelhouse: Path) -> None:
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "-q")
    run(*pip, target, cwd=outside, wheelhouse=wheelhouse)


def smoke(python: Path, venv: Path, outside: Path, address: str) -> None:
    out = run(python, "-c", SMOKE, address, MISSING, cwd=outside).split()
    assert Path(out[0]).resolve().is_relative_to(venv.resolve()), out
    assert out[1:] == ["NOT_FOUND", "TASK_NOT_FOUND"], out


def test_pip_install_of_the_directory_and_of_a_built_wheel(tmp_path, cluster, wheelhouse):
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    # pip install client/python (an isolated PEP 517 build: the hook compiles the protos).
    venv = tmp_path / "from-directory"
    python = fresh_venv(venv, outside)
    pip_install(python, PYTHON_DIR, outside, wheelhouse)
    smoke(python, venv, outside, cluster.a.address)

    # python -m build: an sdist, then a wheel built from the unpacked sdist.
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "build",
        "--outdir",
        dist,
        PYTHON_DIR,
        cwd=outside,
        wheelhouse=wheelhouse,
    )
    (sdist,) = dist.glob("reins-*.tar.gz")
    (wheel,) = dist.glob("reins-*.whl")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"proto/reins/v1/tasks.proto", "proto/reins/v1/workers.proto", "setup.py"} <= names
    assert not [n for n in names if "_pb2" in n], (
        "generated code is built, not shipped in the sdist"
    )
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    for name in ("tasks_pb2.py", "tasks_pb2.pyi", "workers_pb2.py", "workers_pb2_grpc.py"):
        assert f"reins/_proto/{name}" in files, sorted(files)
    assert {"reins/py.typed", "reins/aio/__init__.py"} <= files
    assert not [n for n in files if n.startswith("reins_worker")]
    generated = zipfile.ZipFile(wheel).read("reins/_proto/workers_pb2.py").decode()
    assert "from . import tasks_pb2" in generated and "from reins.v1" not in generated

    venv = tmp_path / "from-wheel"
    python = fresh_venv(venv, outside)
    pip_install(python, wheel, outside, wheelhouse)
    smoke(python, venv, outside, cluster.b.address)
