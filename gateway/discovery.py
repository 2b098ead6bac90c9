"""Where the expert replicas are: a static list, the operator's topology (its headless Services' Endpoints
watched through the Kubernetes API, or their DNS), or the Redis registry. Each source is parsed by a pure
function into GroupSpecs; the gateway re-reads the dynamic ones and swaps the backend's table without a
restart (at once when a watched Endpoints object changes)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from eaas.errors import UserError
from eaas.gateway.replica_table import GroupSpec
from eaas.topology import format_expert_ids, parse_expert_ids


def parse_expert_servers(text: str) -> list[GroupSpec]:
    """'0-3=h:1,h:2;4-7=h:3' -> one GroupSpec per ';'-separated group."""
    groups = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        if "=" not in part:
            raise UserError(f"--expert-servers group {part!r} must look like '0-3=host:port,host:port'")
        ids, addrs = part.split("=", 1)
        try:
            expert_ids = tuple(parse_expert_ids(ids))
        except ValueError as exc:
            raise UserError(f"--expert-servers: {exc}") from None
        addresses = tuple(a.strip() for a in addrs.split(",") if a.strip())
        if not addresses:
            raise UserError(f"--expert-servers group {ids!r} lists no address")
        groups.append(GroupSpec(expert_ids, addresses, f"g{i}"))
    if not groups:
        raise UserError("--expert-servers is empty")
    return groups


def format_expert_servers(groups: list[GroupSpec]) -> str:
    return ";".join(f"{format_expert_ids(g.expert_ids)}={','.join(g.addresses)}" for g in groups)


def load_topology(path: str | Path) -> dict:
    try:
        topo = json.loads(Path(path).read_text())
        for g in topo["groups"]:
            g["experts"], g["service"], g["port"]  # noqa: B018 - the contract's required fields
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"bad topology file {path}: {exc}") from None
    return topo


def groups_from_topology(topo: dict, resolve=socket.gethostbyname_ex) -> list[GroupSpec]:
    """Each group's headless Service name resolves to one address per ready replica."""
    groups = []
    for g in topo["groups"]:
        try:
            ips = sorted(set(resolve(g["service"])[2]))
        except OSError:
            ips = []
        groups.append(GroupSpec(tuple(g["experts"]), tuple(f"{ip}:{g['port']}" for ip in ips), g.get("name", "")))
    return groups


def ready_addresses(endpoints: dict, port_name: str, default_port: int) -> tuple[str, ...]:
    """'ip:port' of every *ready* address of a v1 Endpoints object (notReadyAddresses are left out: a
    replica receives RPCs only once its readiness probe passed), sorted, for the port named `port_name`."""
    found = set()
    for subset in endpoints.get("subsets") or []:
        ports = subset.get("ports") or []
        port = next((p["port"] for p in ports if p.get("name") == port_name), None)
        if port is None:
            port = ports[0]["port"] if len(ports) == 1 else default_port
        for address in subset.get("addresses") or []:
            found.add(f"{address['ip']}:{port}")
    return tuple(sorted(found))


def apply_endpoints_event(table: dict[str, dict], kind: str, endpoints: dict) -> dict[str, dict]:
    """The watched Endpoints by Service name after one watch event (ADDED, MODIFIED, DELETED)."""
    name = endpoints["metadata"]["name"]
    updated = {k: v for k, v in table.items() if k != name}
    if kind != "DELETED":
        updated[name] = endpoints
    return updated


def groups_from_endpoints(topo: dict, table: dict[str, dict], port_name: str = "grpc") -> list[GroupSpec]:
    """Each topology group's replicas are the ready addresses of its Service's Endpoints (none yet: empty)."""
    return [GroupSpec(tuple(g["experts"]),
                      ready_addresses(table[g["service"]], port_name, g["port"]) if g["service"] in table else (),
                      g.get("name", ""))
            for g in topo["groups"]]


def groups_from_registry(replicas: dict, fingerprint: str) -> list[GroupSpec]:
    """Registry entries ({address: ReplicaInfo}) of this model, grouped by the experts they hold."""
    by_experts: dict[tuple[int, ...], list[str]] = {}
    names: dict[tuple[int, ...], str] = {}
    for address, info in sorted(replicas.items()):
        if info.fingerprint and info.fingerprint != fingerprint:
            continue
        key = tuple(sorted(info.experts))
        by_experts.setdefault(key, []).append(address)
        names.setdefault(key, info.group)
    return [GroupSpec(k, tuple(v), names[k]) for k, v in sorted(by_experts.items())]


def usable(groups: list[GroupSpec], num_experts: int) -> bool:
    """A table can serve only if every expert has a group with at least one replica."""
    covered = {e for g in groups if g.addresses for e in g.expert_ids}
    return covered >= set(range(num_experts))
