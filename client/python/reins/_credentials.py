"""``reins.Credentials``: what a client or worker presents to a server that authenticates —
a bearer token (sent as ``authorization: Bearer …`` on every call), the CA that signed the
server's certificate, and a client certificate and key for mutual TLS.

Tokens travel only over TLS (``https://``), or in plaintext to a loopback address (where
gRPC's local credentials carry them): a token sent in the clear over a network could be
read by anyone on the way, so that is refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Credentials:
    """A bearer token and/or TLS material (PEM bytes); every field is optional."""

    token: str | None = None
    ca_cert: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key (cert with key)")

    @classmethod
    def from_files(
        cls,
        token: str | None = None,
        ca_cert: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> Credentials:
        """Reads the PEM files (as ``reins --ca-cert/--cert/--key`` do)."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(token=token, ca_cert=read(ca_cert), cert=read(cert), key=read(key))

    @property
    def wants_tls(self) -> bool:
        return self.ca_cert is not None or self.cert is not None

    def channel_credentials(self, address: str, secure: bool) -> grpc.ChannelCredentials | None:
        """The credentials of a channel to ``address``; ``None``: a plaintext channel."""
        if secure or self.wants_tls:
            transport = grpc.ssl_channel_credentials(
                root_certificates=self.ca_cert, private_key=self.key, certificate_chain=self.cert
            )
        elif self.token is None:
            return None
        elif is_loopback(address):
            transport = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            raise ValueError(
                f"a token is sent only over TLS: use https://{address} (or a loopback address)"
            )
        if self.token is None:
            return transport
        return grpc.composite_channel_credentials(
            transport, grpc.access_token_call_credentials(self.token)
        )


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
