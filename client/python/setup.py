"""The build hook: compiles ``proto/reins/v1/*.proto`` into ``reins/_proto/`` at build time.

Everything else about the package is in ``pyproject.toml``; setuptools (the PEP 517
backend named there) runs this file for its ``cmdclass`` only:

- ``build_py`` runs grpcio-tools' bundled ``protoc`` (a build-time dependency only, see
  ``[build-system] requires``) over the protos and writes ``tasks_pb2.py``/``.pyi``,
  ``workers_pb2.py``/``.pyi`` and their ``_grpc`` modules into ``reins/_proto/`` of the
  build, with protoc's absolute ``from reins.v1 import …`` turned into package-relative
  ``from . import …``. In an editable install (``pip install -e``) they are written into
  the source tree instead (git-ignored), since that is where the package is imported from.
- ``sdist`` copies the protos into the sdist as ``proto/``, so a wheel built from the sdist
  (``python -m build`` does exactly that) finds them without a checkout.

The protos are looked for in ``./proto`` (an unpacked sdist), then ``../../proto`` (this
directory inside a checkout of the repository).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_FILES = ("reins/v1/tasks.proto", "reins/v1/workers.proto")
#: Where the generated modules go, relative to the build (or source) root.
OUT_PACKAGE = Path("reins") / "_proto"
#: protoc writes ``from reins.v1 import tasks_pb2 as reins_dot_v1_dot_tasks__pb2``.
ABSOLUTE_IMPORT = re.compile(r"^from reins\.v1 import (\w+) as ", re.MULTILINE)


def proto_root() -> Path:
    """The directory holding ``reins/v1/*.proto``."""
    for candidate in (HERE / "proto", HERE.parent.parent / "proto"):
        if all((candidate / name).is_file() for name in PROTO_FILES):
            return candidate
    raise FileNotFoundError(
        f"the Reins protos ({', '.join(PROTO_FILES)}) are neither in {HERE / 'proto'} "
        f"(an sdist) nor in {HERE.parent.parent / 'proto'} (a checkout)"
    )


def generate(out_dir: Path) -> list[Path]:
    """Compiles the protos into ``out_dir`` (flat), imports made package-relative."""
    import grpc_tools  # the build-time dependency
    from grpc_tools import protoc

    protos = proto_root()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="reins-protoc-") as staging:
        args = [
            "grpc_tools.protoc",
            f"-I{protos}",
            f"-I{well_known}",
            f"--python_out={staging}",
            f"--pyi_out={staging}",
            f"--grpc_python_out={staging}",
            *(str(protos / name) for name in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        for source in sorted((Path(staging) / "reins" / "v1").iterdir()):
            text = ABSOLUTE_IMPORT.sub(r"from . import \1 as ", source.read_text())
            target = out_dir / source.name
            target.write_text(text)
            written.append(target)
    return written


class BuildPyWithProtos(build_py):  # type: ignore[misc]
    """``build_py`` that also generates ``reins/_proto/*_pb2*.py[i]``."""

    def run(self) -> None:
        super().run()
        root = HERE if self.editable_mode else Path(self.build_lib)
        generated = generate(root / OUT_PACKAGE)
        self._generated = [str(path) for path in generated]

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        return outputs + list(getattr(self, "_generated", []))


class SdistWithProtos(sdist):  # type: ignore[misc]
    """``sdist`` that carries a copy of the protos in ``proto/``."""

    def make_release_tree(self, base_dir: str, files: Any) -> None:
        super().make_release_tree(base_dir, files)
        protos = proto_root()
        for name in PROTO_FILES:
            target = Path(base_dir) / "proto" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(protos / name, target)


if __name__ == "__main__" and sys.argv[1:2] == ["generate"]:
    # `python setup.py generate`: the stubs in the source tree, for development (mypy,
    # running from a checkout). The same files an editable install writes; git-ignored.
    for path in generate(HERE / OUT_PACKAGE):
        print(path.relative_to(HERE))
else:
    setup(cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithProtos})
