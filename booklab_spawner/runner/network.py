"""The notebooks' own Docker network and the host firewall around it (bridge mode).

In ``bridge`` mode every notebook container joins one Docker bridge network
that the runner creates (``--notebook-network``, default ``booklab``) with
inter-container communication disabled (``enable_icc=false``: Docker drops
traffic between two containers of the network), and whose Linux bridge
interface carries the same name. Around it the runner keeps two iptables
chains of its own, rewritten in one ``iptables-restore`` transaction (so never
half-written) before each bridge-mode launch:

``<NAME>-IN``, jumped to from ``INPUT`` for packets coming in on the bridge:
    traffic from a notebook to **this host** (any of its addresses: the bridge
    gateway, the LAN address, ports published by other containers through
    Docker's userland proxy). Replies to connections the host opened are let
    through; so are the ``--notebook-allow`` destinations (e.g. the hub's
    API when the hub runs on this machine); everything else is rejected.
``<NAME>-FWD``, jumped to from Docker's ``DOCKER-USER`` for the same packets:
    traffic routed elsewhere. The ``--notebook-allow`` destinations are
    accepted; Redis (the runner's ``--redis-url`` host and port) and every
    ``--notebook-deny`` network are rejected; the rest goes on through
    Docker's own rules (which drop notebook-to-notebook traffic).

Destinations are matched on the connection's original address
(``conntrack --ctorigdst``), so a port published by Docker (DNAT) is judged
by the address the notebook asked for. Re-running is idempotent: the chains
are replaced as a whole and the jumps are added only when missing. Only IPv4:
the network has no IPv6.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from docker.errors import APIError, NotFound
from docker.types import IPAMConfig, IPAMPool

from ..exceptions import LaunchFailed

log = logging.getLogger(__name__)

ICC = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME = "com.docker.network.bridge.name"
LABEL = "org.booklab.notebook-network"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # a Linux interface name
IPTABLES = "iptables"


class NetworkUnsafe(LaunchFailed):
    """The notebook network or its firewall cannot be set up as promised."""


@dataclass(frozen=True)
class Rule:
    """A destination: an IPv4 network, optionally one port of one protocol."""

    net: str
    port: int = 0
    proto: str = "tcp"

    def match(self) -> str:
        out = f"-m conntrack --ctorigdst {self.net}"
        if self.port:
            out = f"-p {self.proto} {out} --ctorigdstport {self.port}"
        return out


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"notebook network {name!r}: 1-15 characters of [A-Za-z0-9_.-] "
                         "(it also names the bridge interface)")
    return name


def parse_allow(value: str) -> Rule:
    """``ADDRESS:PORT`` or ``ADDRESS:PORT/udp``, e.g. ``10.0.0.5:8081``."""
    spec, _, proto = value.partition("/")
    address, _, port = spec.rpartition(":")
    proto = proto or "tcp"
    try:
        ip = ipaddress.IPv4Address(address)
        number = int(port)
    except ValueError:
        raise ValueError(f"notebook_allow {value!r}: expected IPv4ADDRESS:PORT[/udp], "
                         "e.g. 10.0.0.5:8081") from None
    if not 0 < number < 65536 or proto not in ("tcp", "udp"):
        raise ValueError(f"notebook_allow {value!r}: port 1-65535, protocol tcp or udp")
    return Rule(str(ip), number, proto)


def parse_deny(value: str) -> Rule:
    """An IPv4 network or address, e.g. ``10.0.0.0/24``."""
    try:
        return Rule(str(ipaddress.IPv4Network(value, strict=False)))
    except ValueError:
        raise ValueError(f"notebook_deny {value!r}: expected an IPv4 network such as "
                         "10.0.0.0/24") from None


def redis_rules(url: str) -> list[Rule]:
    """The Redis server of ``url`` as deny rules (its IPv4 addresses and port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return []  # a unix socket: nothing to reach over the network
    port = parts.port or 6379
    try:
        infos = socket.getaddrinfo(parts.hostname, port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        log.warning("cannot resolve Redis host %s for the firewall: %s", parts.hostname, e)
        return []
    return sorted({Rule(info[4][0], port) for info in infos
                   if not ipaddress.IPv4Address(info[4][0]).is_loopback})


class NotebookNetwork:
    """Creates/checks the notebook network and (re)writes its firewall."""

    def __init__(self, client: Any, name: str = "booklab", subnet: str = "",
                 firewall: bool = True, allow: list[Rule] | None = None,
                 deny: list[Rule] | None = None):
        self.client = client
        self.name = check_name(name)
        self.subnet = str(ipaddress.IPv4Network(subnet)) if subnet else ""
        self.firewall = firewall
        self.allow = list(allow or [])
        self.deny = list(deny or [])
        self._lock = asyncio.Lock()

    @property
    def chains(self) -> tuple[str, str]:
        base = self.name.upper()
        return f"{base}-IN", f"{base}-FWD"

    async def ensure(self) -> str:
        """Firewall, then network; returns the network's name for ``network_mode``."""
        async with self._lock:
            await asyncio.to_thread(self._ensure)
        return self.name

    def _ensure(self) -> None:
        if self.firewall:
            self.apply_firewall()
        self.check(self._network().attrs)

    # -- Docker network -------------------------------------------------------
    def _network(self) -> Any:
        try:
            return self.client.networks.get(self.name)
        except NotFound:
            pass
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=self.subnet)]) if self.subnet else None
        try:
            return self.client.networks.create(
                self.name, driver="bridge", ipam=ipam, labels={LABEL: "1"},
                options={ICC: "false", BRIDGE_NAME: self.name}, check_duplicate=True)
        except APIError as e:
            # created meanwhile by another runner process on this engine: Docker says
            # 409 (same name) or 403 "networks have same bridge name" (ours is fixed);
            # the winner's network is ours too once check() accepts it
            try:
                return self.client.networks.get(self.name)
            except NotFound:
                pass
            raise NetworkUnsafe(f"Docker could not create the notebook network "
                                f"{self.name}: {getattr(e, 'explanation', e)}") from None

    def check(self, attrs: dict[str, Any]) -> None:
        """Refuse a network that would not isolate notebooks (e.g. made by hand)."""
        options = attrs.get("Options") or {}
        problems = []
        if attrs.get("Name") != self.name or attrs.get("Driver") != "bridge":
            problems.append("it is not a bridge network of that name")
        if options.get(ICC) != "false":
            problems.append(f"{ICC} is not false")
        if options.get(BRIDGE_NAME) != self.name:
            problems.append(f"its bridge interface is not named {self.name}")
        subnets = [c.get("Subnet") for c in (attrs.get("IPAM") or {}).get("Config") or []]
        if self.subnet and self.subnet not in subnets:
            problems.append(f"its subnet is {', '.join(map(str, subnets))}, not {self.subnet}")
        if problems:
            raise NetworkUnsafe(f"Docker network {self.name} cannot hold notebooks: "
                                f"{'; '.join(problems)}. Remove it (docker network rm "
                                f"{self.name}) and the runner recreates it")

    # -- iptables ---------------------------------------------------------------
    def restore_input(self, missing_jumps: list[str]) -> str:
        """The ``iptables-restore --noflush`` text that replaces both chains."""
        chain_in, chain_fwd = self.chains
        est = "-m conntrack --ctstate RELATED,ESTABLISHED"
        lines = ["*filter", f":{chain_in} - [0:0]", f":{chain_fwd} - [0:0]",
                 f"-A {chain_in} {est} -j RETURN"]
        lines += [f"-A {chain_in} {r.match()} -j ACCEPT" for r in self.allow]
        lines += [f"-A {chain_in} -p tcp -j REJECT --reject-with tcp-reset",
                  f"-A {chain_in} -j REJECT --reject-with icmp-port-unreachable",
                  f"-A {chain_fwd} {est} -j RETURN"]
        lines += [f"-A {chain_fwd} {r.match()} -j ACCEPT" for r in self.allow]
        for r in self.deny:
            reject = "tcp-reset" if r.port and r.proto == "tcp" else "icmp-port-unreachable"
            lines.append(f"-A {chain_fwd} {r.match()} -j REJECT --reject-with {reject}")
        lines += [f"-A {chain_fwd} -j RETURN", *missing_jumps, "COMMIT", ""]
        return "\n".join(lines)

    def jumps(self) -> list[tuple[str, str]]:
        chain_in, chain_fwd = self.chains
        return [("INPUT", f"-i {self.name} -j {chain_in}"),
                ("DOCKER-USER", f"-i {self.name} -j {chain_fwd}")]

    def apply_firewall(self) -> None:
        if _iptables("-S", "DOCKER-USER").returncode != 0:
            raise NetworkUnsafe("iptables has no DOCKER-USER chain (is dockerd running with "
                                "--iptables=false?): start dockerd with its iptables rules, "
                                "or run the runner with --no-firewall and firewall the "
                                "notebook network yourself")
        missing = [f"-I {parent} 1 {rule}" for parent, rule in self.jumps()
                   if _iptables("-C", parent, *rule.split()).returncode != 0]
        result = subprocess.run([f"{IPTABLES}-restore", "-w", "--noflush"],
                                input=self.restore_input(missing), text=True,
                                capture_output=True, check=False)
        if result.returncode != 0:
            raise NetworkUnsafe(f"could not set the notebook firewall (iptables-restore: "
                                f"{result.stderr.strip()[:300]}); the runner needs root or "
                                "CAP_NET_ADMIN in the host's network namespace")
        log.debug("firewall for %s set (%d allowed, %d denied)", self.name,
                  len(self.allow), len(self.deny))

    def remove(self) -> None:
        """Delete the chains, their jumps and the network (tests, uninstall)."""
        for parent, rule in self.jumps():
            while _iptables("-C", parent, *rule.split()).returncode == 0:
                _iptables("-D", parent, *rule.split())
        for chain in self.chains:
            _iptables("-F", chain)
            _iptables("-X", chain)
        try:
            self.client.networks.get(self.name).remove()
        except NotFound:
            pass


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([IPTABLES, "-w", *args], capture_output=True, text=True, check=False)
