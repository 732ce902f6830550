"""The worker examples of the repository README's "Workers in any language" section, run as
they are written (only the address and the kind replaced): each one's task stops on a soft
cancel with its partial results, and the process exits on SIGTERM.

The TypeScript one is transpiled with the Node package's own TypeScript (run_tests.sh
builds client/node) into ``client/node/dist/`` so that ``@reins/sdk`` resolves to the
package itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from harness import PATIENCE, REPO, Cluster, until_terminal, watch_until
from reins import from_value
from reins.proto import tasks_pb2, tasks_pb2_grpc

NODE_DIR = REPO / "client" / "node"
SECTION = re.compile(r"^## Workers in any language$(.*?)^## ", re.MULTILINE | re.DOTALL)


def example(language: str) -> str:
    """The section's one code block in ``language`` (``python`` or ``ts``)."""
    section = SECTION.search((REPO / "README.md").read_text())
    assert section, "README.md has no 'Workers in any language' section"
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", section[1], re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"{len(blocks)} {language} blocks in the section"
    code: str = blocks[0]
    assert len(code.splitlines()) < 30, f"the {language} example is not under 30 lines"
    return code


def adapted(code: str, address: str, kind: str) -> str:
    """The example serving ``kind`` on ``address`` instead of the README's."""
    assert code.count('"127.0.0.1:50051"') == 1
    code = code.replace('"127.0.0.1:50051"', json.dumps(address))
    (named,) = re.findall(r'\["(\w+)"\]', code)  # the kinds list
    return code.replace(f'["{named}"]', f'["{kind}"]')


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="reins-readme-") as path:
        yield Path(path)


def node_program(code: str, workdir: Path) -> list[str]:
    """``node <file>`` running ``code`` transpiled from TypeScript, inside the package."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "typescript").is_dir():
        pytest.fail("node and client/node's packages are needed: run_tests.sh builds them")
    dist = NODE_DIR / "dist"
    target = Path(tempfile.mkdtemp(prefix="readme-", dir=dist)) / "worker.mjs"
    source = workdir / "worker.ts"
    source.write_text(code)
    transpile = (
        "const ts = require('typescript'); const fs = require('fs');"
        "const out = ts.transpileModule(fs.readFileSync(process.argv[1], 'utf8'),"
        " { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } });"
        "fs.writeFileSync(process.argv[2], out.outputText);"
    )
    subprocess.run([node, "-e", transpile, str(source), str(target)], cwd=NODE_DIR, check=True)
    return [node, str(target)]


def start_once_served(
    stub: tasks_pb2_grpc.TaskServiceStub, request: tasks_pb2.StartTaskRequest
) -> tasks_pb2.Task:
    """StartTask, polled (with a deadline) until the kind is known: the example prints
    nothing, and its kind is valid once its worker's hello reached a replica."""
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            task: tasks_pb2.Task = stub.StartTask(request)
            return task
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT or time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # polling for the worker's hello, with a deadline


@pytest.mark.parametrize("language", ["python", "ts"])
def test_the_readme_worker_stops_on_a_soft_cancel_with_its_partial_results(
    cluster: Cluster, channels, kind: str, workdir: Path, language: str
) -> None:
    code = adapted(example(language), cluster.a.address, kind)
    if language == "python":
        (workdir / "worker.py").write_text(code)
        command = [sys.executable, str(workdir / "worker.py")]
    else:
        command = node_program(code, workdir)
    log = workdir / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        b = channels(cluster.b.address)
        params = struct_pb2.Struct()
        params.update({"steps": 100_000})
        task = start_once_served(b, tasks_pb2.StartTaskRequest(kind=kind, params=params))
        watch_until(b, task.id, lambda t: len(t.partial_results) >= 2, "checkpointed")
        b.SoftCancel(tasks_pb2.SoftCancelRequest(task_id=task.id, reason="enough"))
        done = until_terminal(b, task.id)
        assert done.state == tasks_pb2.TASK_STATE_CANCELLED, (done, log.read_text())
        assert not done.cancel.escalated, "the worker did not stop by itself"
        steps = from_value(done.result)["done"]
        assert len(steps) >= 2
        assert [from_value(p)["step"] for p in done.partial_results] == steps
        process.terminate()  # SIGTERM: the worker drains and exits
        assert process.wait(PATIENCE) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if language == "ts":
            shutil.rmtree(Path(command[1]).parent, ignore_errors=True)
