"""Where the gateway finds expert replicas: each source parsed by a pure function, tested alone."""

from __future__ import annotations

import json
import socket

import pytest

from eaas.errors import UserError
from eaas.gateway.discovery import (format_expert_servers, groups_from_registry, groups_from_topology, load_topology,
                                    parse_expert_servers, usable)
from eaas.gateway.replica_table import GroupSpec
from eaas.mempool import ReplicaInfo


def test_static_spec_round_trips_and_bad_specs_are_user_errors():
    groups = parse_expert_servers("0-3=h:1,h:2;4-7=h:3")
    assert groups == [GroupSpec((0, 1, 2, 3), ("h:1", "h:2"), "g0"), GroupSpec((4, 5, 6, 7), ("h:3",), "g1")]
    assert format_expert_servers(groups) == "0-3=h:1,h:2;4-7=h:3"
    for bad in ("", "0-3", "0-3=", "x=h:1", "3-1=h:1"):
        with pytest.raises(UserError):
            parse_expert_servers(bad)


def test_topology_groups_resolve_their_headless_services(tmp_path):
    topo_file = tmp_path / "topology.json"
    topo_file.write_text(json.dumps({"deployment": "mix", "groups": [
        {"name": "g0", "experts": [0, 1], "service": "mix-experts-g0", "port": 50051},
        {"name": "g1", "experts": [2, 3], "service": "mix-experts-g1", "port": 50051}]}))
    dns = {"mix-experts-g0": ["10.0.0.7", "10.0.0.5"], "mix-experts-g1": []}

    def resolve(name):
        if not dns[name]:
            raise socket.gaierror("no ready endpoints")
        return name, [], dns[name]

    groups = groups_from_topology(load_topology(topo_file), resolve)
    assert groups == [GroupSpec((0, 1), ("10.0.0.5:50051", "10.0.0.7:50051"), "g0"), GroupSpec((2, 3), (), "g1")]
    assert not usable(groups, 4)  # experts 2-3 have no replica yet: the gateway keeps waiting
    dns["mix-experts-g1"] = ["10.0.0.9"]
    assert usable(groups_from_topology(load_topology(topo_file), resolve), 4)
    (tmp_path / "bad.json").write_text('{"groups": [{"experts": [0]}]}')
    with pytest.raises(UserError):
        load_topology(tmp_path / "bad.json")


def test_registry_entries_group_by_experts_and_skip_other_models():
    def info(addr, experts, fp="fp1", group="g0"):
        return ReplicaInfo(address=addr, group=group, layers=(0, 1), experts=experts, fingerprint=fp)

    replicas = {"a:1": info("a:1", (0, 1)), "b:1": info("b:1", (0, 1)), "c:1": info("c:1", (2, 3), group="g1"),
                "d:1": info("d:1", (2, 3), fp="other-model", group="g1")}
    groups = groups_from_registry(replicas, "fp1")
    assert groups == [GroupSpec((0, 1), ("a:1", "b:1"), "g0"), GroupSpec((2, 3), ("c:1",), "g1")]
    assert usable(groups, 4) and not usable(groups, 5)


def test_load_statistics_are_the_difference_of_cumulative_counts():
    from eaas.gateway.server import routed_since

    assert routed_since([], [3, 0, 5]) == {0: 3, 2: 5}
    assert routed_since([3, 0, 5], [4, 0, 5, 2]) == {0: 1, 3: 2}  # a new expert id appears
    assert routed_since([4, 0, 5, 2], [4, 0, 5, 2]) == {}


def endpoints(name: str, ready: list[str], not_ready: list[str] = (), port: int = 50051) -> dict:
    subset = {"ports": [{"name": "grpc", "port": port, "protocol": "TCP"}, {"name": "metrics", "port": 9090}]}
    if ready:
        subset["addresses"] = [{"ip": ip} for ip in ready]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    return {"metadata": {"name": name}, "subsets": [subset] if ready or not_ready else []}


def test_endpoints_events_make_the_table_of_ready_replicas():
    from eaas.gateway.discovery import apply_endpoints_event, groups_from_endpoints

    topo = {"groups": [{"name": "g0", "experts": [0, 1], "service": "mix-experts-g0", "port": 50051},
                       {"name": "g1", "experts": [2, 3], "service": "mix-experts-g1", "port": 50051}]}
    table = apply_endpoints_event({}, "ADDED", endpoints("mix-experts-g0", ["10.1.0.9", "10.1.0.2"], ["10.1.0.4"]))
    table = apply_endpoints_event(table, "ADDED", endpoints("other-service", ["10.9.9.9"]))
    assert groups_from_endpoints(topo, table) == [
        GroupSpec((0, 1), ("10.1.0.2:50051", "10.1.0.9:50051"), "g0"), GroupSpec((2, 3), (), "g1")]
    # the not-ready replica passes its probe: it joins; a deleted pod leaves the addresses at once
    table = apply_endpoints_event(table, "MODIFIED", endpoints("mix-experts-g0", ["10.1.0.4", "10.1.0.2"]))
    table = apply_endpoints_event(table, "ADDED", endpoints("mix-experts-g1", ["10.1.0.7"]))
    assert groups_from_endpoints(topo, table) == [
        GroupSpec((0, 1), ("10.1.0.2:50051", "10.1.0.4:50051"), "g0"), GroupSpec((2, 3), ("10.1.0.7:50051",), "g1")]
    assert usable(groups_from_endpoints(topo, table), 4)
    table = apply_endpoints_event(table, "DELETED", endpoints("mix-experts-g1", []))
    assert groups_from_endpoints(topo, table)[1].addresses == ()
