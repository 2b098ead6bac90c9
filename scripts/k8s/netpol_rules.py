"""NetworkPolicy ingress semantics as pure functions, and the iptables rules that enforce them.

The testbed's CNI (bridge + host-local + portmap) enforces no NetworkPolicy; netpol_enforcer.py feeds
these functions the API's NetworkPolicies, Pods and Namespaces and loads the rules they return. The
subset of networking.k8s.io/v1 implemented (what the eaas operator writes, and a little more):
ingress only; podSelector / namespaceSelector with matchLabels and matchExpressions; ipBlock (matched
against pod IPs: nothing outside the node reaches pods here); ports by number or by container port name, TCP/UDP/SCTP. Traffic from the node itself never
crosses FORWARD (the kubelet's probes, the host's tests), as Kubernetes requires: the node may always
reach its pods. Egress rules are ignored (the operator writes none).
"""
from __future__ import annotations

import ipaddress

CHAIN = "EAAS-NETPOL"


def selects(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector against labels: every matchLabels pair and every matchExpression must hold;
    an empty selector selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _labels(obj: dict) -> dict:
    return obj.get("metadata", {}).get("labels") or {}


def _namespace_labels(namespaces: list[dict], name: str) -> dict:
    return next((_labels(ns) for ns in namespaces if ns["metadata"]["name"] == name), {})


def is_ingress_policy(policy: dict) -> bool:
    """policyTypes absent means Ingress (plus Egress when egress rules are present)."""
    return "Ingress" in (policy["spec"].get("policyTypes") or ["Ingress"])


def isolating_policies(policies: list[dict], pod: dict) -> list[dict]:
    """The ingress policies of the pod's namespace that select it: none means the pod admits everything."""
    ns = pod["metadata"]["namespace"]
    return [p for p in policies if p["metadata"]["namespace"] == ns and is_ingress_policy(p)
            and selects(p["spec"].get("podSelector"), _labels(pod))]


def peer_admits(peer: dict, policy_ns: str, source: dict, namespaces: list[dict]) -> bool:
    """One `from` entry against a source pod (ipBlock: against the pod's IP)."""
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(source["status"]["podIP"])
        return ip in ipaddress.ip_network(block["cidr"], strict=False) and not any(
            ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
    source_ns = source["metadata"]["namespace"]
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], _namespace_labels(namespaces, source_ns)):
            return False
    elif source_ns != policy_ns:  # a podSelector alone means the policy's own namespace
        return False
    return selects(peer.get("podSelector"), _labels(source))


def target_ports(rule: dict, target: dict) -> list[tuple[str, int | None]]:
    """(protocol, port) pairs a rule opens on the target; port None: every port. Named ports resolve
    against the target's containers (a name it does not have opens nothing)."""
    if not rule.get("ports"):
        return [("TCP", None), ("UDP", None), ("SCTP", None)]
    named = {p["name"]: p["containerPort"] for c in target["spec"].get("containers") or []
             for p in c.get("ports") or [] if p.get("name")}
    opened = []
    for entry in rule["ports"]:
        protocol, port = entry.get("protocol", "TCP"), entry.get("port")
        if isinstance(port, str):
            if port not in named:
                continue
            port = named[port]
        opened.append((protocol, port))
    return opened


def admitted(policies: list[dict], namespaces: list[dict], target: dict, source: dict, port: int,
             protocol: str = "TCP") -> bool:
    """Does a new connection from pod `source` reach pod `target` on port/protocol?"""
    selecting = isolating_policies(policies, target)
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            if not any(p == protocol and (n is None or n == port) for p, n in target_ports(rule, target)):
                continue
            peers = rule.get("from")
            if not peers or any(peer_admits(peer, policy["metadata"]["namespace"], source, namespaces)
                                for peer in peers):
                return True
    return False


def running_pods(pods: list[dict]) -> list[dict]:
    """Pods with their own IP on the pod network (hostNetwork pods share the node's)."""
    return [p for p in pods if (p.get("status") or {}).get("podIP") and not p["spec"].get("hostNetwork")]


def allowed_flows(policies: list[dict], namespaces: list[dict], pods: list[dict]
                  ) -> dict[str, list[tuple[str | None, str, int | None]]]:
    """For every isolated pod IP: the (source IP or None for any, protocol, port or None) it admits."""
    pods = running_pods(pods)
    flows: dict[str, list[tuple[str | None, str, int | None]]] = {}
    for target in pods:
        selecting = isolating_policies(policies, target)
        if not selecting:
            continue
        allowed: set[tuple[str | None, str, int | None]] = set()
        for policy in selecting:
            for rule in policy["spec"].get("ingress") or []:
                ports = target_ports(rule, target)
                peers = rule.get("from")
                if not peers:
                    sources: list[str | None] = [None]
                else:
                    sources = [s["status"]["podIP"] for s in pods
                               if any(peer_admits(peer, policy["metadata"]["namespace"], s, namespaces)
                                      for peer in peers)]
                allowed |= {(src, proto, port) for src in sources for proto, port in ports}
        flows[target["status"]["podIP"]] = sorted(allowed, key=lambda f: (f[0] or "", f[1], f[2] or 0))
    return flows


def restore_text(flows: dict[str, list[tuple[str | None, str, int | None]]]) -> str:
    """iptables-restore input (--noflush) that replaces CHAIN: established traffic passes, each isolated
    pod admits its flows and rejects the rest (a refused connection, not a hang)."""
    lines = ["*filter", f":{CHAIN} - [0:0]",
             f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"]
    for target in sorted(flows):
        for source, protocol, port in flows[target]:
            rule = f"-A {CHAIN} -d {target}/32"
            if source:
                rule += f" -s {source}/32"
            rule += f" -p {protocol.lower()}"
            if port is not None:
                rule += f" --dport {port}"
            lines.append(rule + " -j RETURN")
        lines.append(f"-A {CHAIN} -d {target}/32 -j REJECT --reject-with icmp-port-unreachable")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
