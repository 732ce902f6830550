"""The chaos run's network: a namespace of its own, and one per replica.

The run re-executes itself in a new network and mount namespace (``unshare --net
--mount``), so nothing it does is seen by the machine: its addresses, its namespaces
(``/run/netns`` is a tmpfs of its own) and its filter rules vanish with it. There:

- Redis listens on ``10.77.0.1`` (an address on the run's loopback);
- replica ``i`` runs in network namespace ``replica<i>``, joined to the run's namespace by a
  veth pair: ``10.77.<i>.1`` on the run's side, ``10.77.<i>.2`` (where the replica
  listens) on its own, with its default route through the pair, so it reaches Redis;
- clients, the workers' relay and Redis stay in the run's namespace and reach the replica
  at ``10.77.<i>.2``.

Cutting replica ``i`` off from Redis drops every packet between it and ``10.77.0.1`` with
an nftables table in the replica's namespace (both directions, silently: TCP sees a
partition, not a reset), while its clients still reach it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

#: Set in the re-executed run, so it does not unshare again.
INSIDE = "REINS_CHAOS_NETNS"
REDIS_HOST = "10.77.0.1"
_TABLE = "reins_chaos"


def run(*argv: str, input: str | None = None) -> None:
    done = subprocess.run(argv, input=input, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def missing_tools() -> list[str]:
    return [tool for tool in ("unshare", "ip", "nft", "mount") if shutil.which(tool) is None]


def reexec_isolated() -> None:
    """Replaces this process by itself inside new network and mount namespaces (unless it
    runs there already)."""
    if os.environ.get(INSIDE) == "1":
        return
    if os.geteuid() != 0:
        raise SystemExit("chaos: needs root (network namespaces, veth pairs, nftables)")
    if missing := missing_tools():
        raise SystemExit(f"chaos: missing {', '.join(missing)} (iproute2, nftables, util-linux)")
    os.environ[INSIDE] = "1"
    argv = ["unshare", "--net", "--mount", "--", sys.executable, *sys.argv]
    os.execvp("unshare", argv)


def set_up_run_namespace() -> None:
    """Inside the run's namespaces: private mounts, loopback up, Redis's address."""
    run("mount", "--make-rprivate", "/")
    os.makedirs("/run/netns", exist_ok=True)
    run("mount", "-t", "tmpfs", "reins-chaos-netns", "/run/netns")
    run("ip", "link", "set", "lo", "up")
    run("ip", "addr", "add", f"{REDIS_HOST}/32", "dev", "lo")


class ReplicaNet:
    """Replica ``index``'s namespace and veth pair."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"replica{index}"
        self.host_address = f"10.77.{index + 1}.1"
        #: Where the replica listens and its clients reach it.
        self.address = f"10.77.{index + 1}.2"
        self.cut = False

    def create(self) -> None:
        outside, inside = f"vr{self.index}", f"vc{self.index}"
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_address}/24", "dev", outside)
        run("ip", "link", "set", outside, "up")
        self.ip("addr", "add", f"{self.address}/24", "dev", inside)
        self.ip("link", "set", inside, "up")
        self.ip("link", "set", "lo", "up")
        self.ip("route", "add", "default", "via", self.host_address)

    def ip(self, *args: str) -> None:
        run("ip", "-n", self.name, *args)

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut_from_redis(self) -> None:
        rules = f"""
table inet {_TABLE} {{
  chain out {{ type filter hook output priority 0; ip daddr {REDIS_HOST} drop; }}
  chain in {{ type filter hook input priority 0; ip saddr {REDIS_HOST} drop; }}
}}
"""
        run(*self.command("nft", "-f", "-"), input=rules)
        self.cut = True

    def heal(self) -> None:
        if self.cut:
            run(*self.command("nft", "delete", "table", "inet", _TABLE))
            self.cut = False
