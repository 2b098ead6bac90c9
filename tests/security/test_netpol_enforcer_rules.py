"""The testbed's NetworkPolicy enforcer (scripts/k8s/netpol_rules.py) against the semantics of
networking.k8s.io/v1 as the Kubernetes documentation states them, on hand-written policies and on the
policies the operator writes for a real spec."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "k8s"))
from netpol_rules import CHAIN, admitted, allowed_flows, restore_text, selects  # noqa: E402

NAMESPACES = [{"metadata": {"name": "team", "labels": {"tier": "prod"}}},
              {"metadata": {"name": "monitoring", "labels": {"role": "metrics"}}},
              {"metadata": {"name": "other", "labels": {}}}]


def pod(name: str, ns: str, ip: str, labels: dict, ports: dict | None = None, host_network: bool = False) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"hostNetwork": host_network,
                     "containers": [{"ports": [{"name": n, "containerPort": p} for n, p in (ports or {}).items()]}]},
            "status": {"podIP": ip}}


def policy(ns: str, selector: dict, ingress: list, types: list | None = None) -> dict:
    spec = {"podSelector": selector, "ingress": ingress}
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"name": "p", "namespace": ns}, "spec": spec}


SERVER = pod("server", "team", "10.244.0.10", {"app": "server"}, {"grpc": 50051})
CLIENT = pod("client", "team", "10.244.0.11", {"app": "client"})
STRANGER = pod("stranger", "team", "10.244.0.12", {"app": "stranger"})
PROM = pod("prom", "monitoring", "10.244.0.13", {"app": "prometheus"})
ALIEN_CLIENT = pod("client", "other", "10.244.0.14", {"app": "client"})


def test_label_selectors_follow_matchlabels_and_matchexpressions():
    assert selects({}, {"a": "1"}) and selects(None, {})
    assert selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not selects({"matchLabels": {"a": "1"}}, {"a": "2"})
    expr = lambda op, values=None: {"matchExpressions": [{"key": "a", "operator": op, "values": values or []}]}  # noqa: E731
    assert selects(expr("In", ["1", "2"]), {"a": "2"}) and not selects(expr("In", ["1"]), {})
    assert selects(expr("NotIn", ["1"]), {}) and not selects(expr("NotIn", ["1"]), {"a": "1"})
    assert selects(expr("Exists"), {"a": ""}) and not selects(expr("DoesNotExist"), {"a": ""})


def test_a_pod_no_policy_selects_admits_everything_and_a_selected_one_only_what_a_rule_allows():
    rule = {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 50051}]}
    policies = [policy("team", {"matchLabels": {"app": "server"}}, [rule])]
    assert admitted(policies, NAMESPACES, CLIENT, STRANGER, 1234)  # client is not selected
    assert admitted(policies, NAMESPACES, SERVER, CLIENT, 50051)
    assert not admitted(policies, NAMESPACES, SERVER, CLIENT, 9090)  # port not listed
    assert not admitted(policies, NAMESPACES, SERVER, STRANGER, 50051)
    # a podSelector alone means the policy's namespace: same labels elsewhere are refused
    assert not admitted(policies, NAMESPACES, SERVER, ALIEN_CLIENT, 50051)
    assert not admitted(policies, NAMESPACES, SERVER, CLIENT, 50051, "UDP")  # protocol defaults to TCP
    # a policy with no ingress rules isolates the pod entirely; an Egress-only one does not
    assert not admitted([policy("team", {}, [])], NAMESPACES, SERVER, CLIENT, 50051)
    assert admitted([policy("team", {}, [], ["Egress"])], NAMESPACES, SERVER, CLIENT, 50051)
    # a policy in another namespace never selects this pod
    assert admitted([policy("other", {}, [])], NAMESPACES, SERVER, STRANGER, 50051)


def test_peers_by_namespace_named_ports_and_ip_blocks():
    by_ns = {"from": [{"namespaceSelector": {"matchLabels": {"role": "metrics"}}}], "ports": [{"port": 9090}]}
    both = {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
            "ports": [{"port": "grpc", "protocol": "TCP"}]}
    block = {"from": [{"ipBlock": {"cidr": "10.244.0.0/28", "except": ["10.244.0.12/32"]}}],
             "ports": [{"port": 7000}]}
    anyone = {"ports": [{"port": 8000}]}
    policies = [policy("team", {"matchLabels": {"app": "server"}}, [by_ns, both, block, anyone])]
    assert admitted(policies, NAMESPACES, SERVER, PROM, 9090)
    assert not admitted(policies, NAMESPACES, SERVER, STRANGER, 9090)
    assert admitted(policies, NAMESPACES, SERVER, ALIEN_CLIENT, 50051)  # named port, any namespace
    assert not admitted(policies, NAMESPACES, SERVER, PROM, 50051)
    assert admitted(policies, NAMESPACES, SERVER, CLIENT, 7000)
    assert not admitted(policies, NAMESPACES, SERVER, STRANGER, 7000)  # the except
    assert admitted(policies, NAMESPACES, SERVER, STRANGER, 8000)  # no `from`: every source


def test_flows_and_iptables_rules_admit_exactly_what_admitted_says():
    rule = {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "grpc"}]}
    open_rule = {"ports": [{"port": 8000}]}
    hostnet = pod("node-agent", "team", "10.250.0.1", {"app": "server"}, host_network=True)
    pending = {**STRANGER, "status": {}}
    policies = [policy("team", {"matchLabels": {"app": "server"}}, [rule, open_rule])]
    pods = [SERVER, CLIENT, STRANGER, PROM, hostnet, pending]
    flows = allowed_flows(policies, NAMESPACES, pods)
    assert flows == {"10.244.0.10": [(None, "TCP", 8000), ("10.244.0.11", "TCP", 50051)]}
    text = restore_text(flows)
    assert text.splitlines() == [
        "*filter", f":{CHAIN} - [0:0]", f"-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        f"-A {CHAIN} -d 10.244.0.10/32 -p tcp --dport 8000 -j RETURN",
        f"-A {CHAIN} -d 10.244.0.10/32 -s 10.244.0.11/32 -p tcp --dport 50051 -j RETURN",
        f"-A {CHAIN} -d 10.244.0.10/32 -j REJECT --reject-with icmp-port-unreachable", "COMMIT"]
    assert restore_text({}).count("-A ") == 1  # nothing isolated: only the established rule
