"""The generated Reins stubs (``reins.v1``), generated on demand.

Nothing generated is committed: the stubs are compiled from the ``.proto`` files of the
repository (``<repo>/proto``, or ``$REINS_PROTO_DIR``) with grpcio-tools into
``reins_worker/_generated/`` (gitignored), the first time this module is imported or
whenever a ``.proto`` file is newer than the stubs. ``python -m reins_worker.generate``
does it explicitly.

protoc's Python output imports its siblings as ``reins.v1.…``, so the generated directory
is put on ``sys.path``; after ``import reins_worker.proto`` the modules are also
importable as ``reins.v1.tasks_pb2`` and so on.

Exports: ``tasks_pb2``, ``tasks_pb2_grpc``, ``workers_pb2``, ``workers_pb2_grpc``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: Where the stubs are generated.
GENERATED_DIR = PACKAGE_DIR / "_generated"
#: The repository's proto directory: client/python/reins_worker/../../../proto.
DEFAULT_PROTO_DIR = PACKAGE_DIR.parent.parent.parent / "proto"
PROTO_FILES = ("reins/v1/tasks.proto", "reins/v1/workers.proto")


def proto_dir() -> Path:
    """The directory holding ``reins/v1/*.proto``: ``$REINS_PROTO_DIR`` or the repository's."""
    return Path(os.environ.get("REINS_PROTO_DIR", DEFAULT_PROTO_DIR)).resolve()


def _stale(out_dir: Path, protos: Path) -> bool:
    marker = out_dir / "reins" / "v1" / "workers_pb2_grpc.py"
    if not marker.exists():
        return True
    built = marker.stat().st_mtime
    return any((protos / name).stat().st_mtime > built for name in PROTO_FILES)


def generate(out_dir: Path | None = None, protos: Path | None = None) -> Path:
    """Compiles the protos into ``out_dir`` (default :data:`GENERATED_DIR`) and returns it.

    Runs grpcio-tools' bundled protoc (no system ``protoc`` needed); the well-known types
    (``google/protobuf/*.proto``) come with grpcio-tools. The output is written to a
    temporary directory first and then moved in place, so a half-written tree is never
    imported.
    """
    from grpc_tools import protoc  # grpcio-tools: needed only to generate
    import importlib.resources

    out_dir = Path(out_dir or GENERATED_DIR)
    protos = Path(protos or proto_dir())
    missing = [name for name in PROTO_FILES if not (protos / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found under {protos} (set REINS_PROTO_DIR)"
        )
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".generating-", dir=out_dir.parent))
    try:
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
        (staging / ".gitignore").write_text("*\n")
        staging.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _load() -> None:
    protos = proto_dir()
    if protos.exists():
        if _stale(GENERATED_DIR, protos):
            generate(protos=protos)
    elif not (GENERATED_DIR / "reins").exists():
        raise ImportError(
            f"no Reins stubs in {GENERATED_DIR} and no protos in {protos}: "
            "set REINS_PROTO_DIR to the repository's proto/ directory"
        )
    path = str(GENERATED_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)


_load()

from reins.v1 import tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc  # noqa: E402

__all__ = [
    "GENERATED_DIR",
    "generate",
    "proto_dir",
    "tasks_pb2",
    "tasks_pb2_grpc",
    "workers_pb2",
    "workers_pb2_grpc",
]
