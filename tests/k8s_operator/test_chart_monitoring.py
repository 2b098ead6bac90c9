"""The chart's Grafana dashboard and Prometheus operator monitors: off by default; on, every object validates,
the monitors select the pods and ports the operator creates, and every PromQL expression of the dashboard
names only metrics eaas exports (tests/metrics_catalog.py: the real registries, = docs/metrics.md)."""

from __future__ import annotations

import json
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from metrics_catalog import exported_series, registered_metrics

from k8s_testbed import HELM
from test_chart import CHART, helm, rendered

MONITOR_KINDS = {"PodMonitor", "ServiceMonitor"}
ALL_ON = ["--set", "monitoring.dashboard.enabled=true", "--set", "monitoring.podMonitor.enabled=true"]

# --- the Prometheus operator's CRD fields we use (monitoring.coreos.com/v1, as its CRDs define them), closed
# with additionalProperties: false so that a misspelt field fails here instead of being pruned by the API server.
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": _LABEL_NAME}, "targetLabel": {"type": "string"},
    "regex": {"type": "string"}, "replacement": {"type": "string"}, "separator": {"type": "string"},
    "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]}}}
_ENDPOINT = {"type": "object", "additionalProperties": False, "required": ["port"], "properties": {
    "port": {"type": "string", "minLength": 1}, "path": {"type": "string", "pattern": "^/"},
    "interval": _DURATION, "scrapeTimeout": _DURATION, "relabelings": {"type": "array", "items": _RELABEL}}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["key", "operator"], "properties": {
            "key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
            "values": {"type": "array", "items": {"type": "string"}}}}}}}
_NAMESPACES = {"type": "object", "additionalProperties": False, "properties": {
    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}, "minItems": 1}}}
_METADATA = {"type": "object", "required": ["name", "namespace"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
    "namespace": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}


def _monitor_schema(kind: str, endpoints_field: str) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind}, "metadata": _METADATA,
                "spec": {"type": "object", "additionalProperties": False, "required": ["selector", endpoints_field],
                         "properties": {"selector": _SELECTOR, "namespaceSelector": _NAMESPACES,
                                        endpoints_field: {"type": "array", "items": _ENDPOINT, "minItems": 1}}}}}


MONITOR_SCHEMAS = {"PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints"),
                   "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints")}


def validate(doc: dict, version: str) -> None:
    if doc["kind"] in MONITOR_KINDS:
        jsonschema.validate(doc, MONITOR_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def test_monitoring_objects_are_off_by_default():
    kinds = {d["kind"] for d in rendered()}
    assert not kinds & MONITOR_KINDS
    assert not [d for d in rendered() if d["kind"] == "ConfigMap"]


@pytest.mark.parametrize("monitor", ["podMonitor", "serviceMonitor"])
@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_dashboard_and_monitor_render_and_validate(monitor, version):
    docs = rendered("--set", "monitoring.dashboard.enabled=true", "--set", f"monitoring.{monitor}.enabled=true",
                    "--set", f"monitoring.{monitor}.labels.release=kube-prometheus-stack")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ConfigMap") == 1 and kinds.count(monitor[0].upper() + monitor[1:]) == 1
    for doc in docs:
        validate(doc, version)
    monitor_doc = next(d for d in docs if d["kind"] in MONITOR_KINDS)
    assert monitor_doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_monitor_schema_refuses_a_misspelt_field():
    monitor = next(d for d in rendered(*ALL_ON) if d["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate(monitor, kubernetes_validate.latest_version())


def test_both_monitors_at_once_is_refused():
    done = subprocess.run([str(HELM), "template", "eaas", str(CHART), "--set", "monitoring.podMonitor.enabled=true",
                           "--set", "monitoring.serviceMonitor.enabled=true"], capture_output=True, text=True)
    assert done.returncode != 0 and "not both" in done.stderr


def test_lint_passes_with_everything_on():
    out = helm("lint", "--strict", str(CHART), "--set", "monitoring.dashboard.enabled=true",
               "--set", "monitoring.serviceMonitor.enabled=true")
    assert "0 chart(s) failed" in out


def test_monitors_look_in_the_watched_namespaces():
    def selector(*values):
        return next(d for d in rendered(*ALL_ON, *values) if d["kind"] == "PodMonitor")["spec"]["namespaceSelector"]

    assert selector() == {"matchNames": ["eaas-system"]}
    assert selector("--set", "watch.namespaces={team-a,team-b}") == {"matchNames": ["team-a", "team-b"]}
    assert selector("--set", "watch.allNamespaces=true") == {"any": True}


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("monitor", ["PodMonitor", "ServiceMonitor"])
def test_monitors_scrape_the_gateway_and_expert_metrics_ports_the_operator_creates(monitor):
    from eaas.operator.manifests import desired_manifests
    from eaas.operator.spec import parse_spec
    from eaas.operator.features import ClusterFeatures

    example = yaml.safe_load((CHART / "examples/moedeployment.yaml").read_text())
    moe = parse_spec(example["metadata"]["name"], "default", {**example["spec"],
                                                            "memPool": {"managed": True}})
    children = desired_manifests(moe, {}, ClusterFeatures())
    values = ["--set", f"monitoring.{monitor[0].lower() + monitor[1:]}.enabled=true"]
    spec = next(d for d in rendered(*values) if d["kind"] == monitor)["spec"]
    endpoints = spec["podMetricsEndpoints" if monitor == "PodMonitor" else "endpoints"]
    scraped: dict[str, set[str]] = {}  # component -> the port names scraped
    for child in children:
        if monitor == "PodMonitor" and child["kind"] == "Deployment":
            labels = child["spec"]["template"]["metadata"]["labels"]
            ports = {p["name"] for c in child["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        elif monitor == "ServiceMonitor" and child["kind"] == "Service":
            labels, ports = child["metadata"]["labels"], {p["name"] for p in child["spec"]["ports"]}
        else:
            continue
        if _selects(spec["selector"], labels):
            scraped.setdefault(labels["app.kubernetes.io/component"], set()).update(
                e["port"] for e in endpoints if e["port"] in ports)
    assert scraped == {"gateway": {"http"}, "expert-group": {"metrics"}}  # not Redis, not the gRPC ports
    # the target labels the dashboard filters by come from labels every scraped pod has
    relabeled = {r["targetLabel"]: r["sourceLabels"][0] for r in endpoints[0]["relabelings"]}
    assert relabeled["deployment"] == "__meta_kubernetes_pod_label_app_kubernetes_io_instance"


# --- the dashboard's PromQL ---------------------------------------------------------------------------------
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "endpoint", "service",  # Prometheus'
                 "deployment", "component", "expert_group"}  # the monitors' relabelings
PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
                    "clamp_min", "clamp_max", "topk", "bottomk", "abs", "label_values"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses; raises on an unknown function."""
    labels: set[str] = set()
    for block in re.findall(r"\{([^}]*)\}", expr):  # label matchers
        labels.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", block))
    rest = re.sub(r"\{[^}]*\}", " ", expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range selectors: [5m], [$__rate_interval]
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", rest):
        labels.update(re.findall(r"\w+", clause))
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    rest = re.sub(r"\"[^\"]*\"", " ", rest)
    rest = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][-+]?\d+)?", " ", rest)  # numbers
    metrics: set[str] = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", rest):
        word, after = m.group(0), rest[m.end():].lstrip()[:1]
        if after == "(":
            assert word in PROMQL_FUNCTIONS, f"unknown function {word} in {expr}"
        elif word in PROMQL_KEYWORDS:
            continue
        else:
            metrics.add(word)
    if expr.startswith("label_values("):  # Grafana: label_values(metric{...}, label)
        labels.add(rest.rstrip(") ").rsplit(",", 1)[-1].strip())
        metrics.discard(rest.rstrip(") ").rsplit(",", 1)[-1].strip())
    return metrics, labels


def test_promql_names_reads_metrics_and_labels():
    expr = ('histogram_quantile(0.99, sum by (le, op) (rate(eaas_mempool_op_seconds_bucket{namespace=~"$namespace"}'
            '[$__rate_interval]))) / clamp_min(sum(kube_pod_info{pod!="x"}), 1e-9)')
    assert promql_names(expr) == ({"eaas_mempool_op_seconds_bucket", "kube_pod_info"}, {"le", "op", "namespace", "pod"})
    assert promql_names('label_values(eaas_gateway_queue_depth{namespace=~"$namespace"}, deployment)') == (
        {"eaas_gateway_queue_depth"}, {"namespace", "deployment"})
    with pytest.raises(AssertionError, match="unknown function"):
        promql_names("quantile_over_time(0.5, eaas_gateway_queue_depth[5m])")


def _dashboard() -> dict:
    config_map = next(d for d in rendered(*ALL_ON) if d["kind"] == "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(config_map["data"]) == ["eaas.json"]
    return json.loads(config_map["data"]["eaas.json"])


def _expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and every query variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["query"]["query"]))
    return out


def test_dashboard_json_is_a_grafana_dashboard_with_the_promised_panels():
    dash = _dashboard()
    assert dash["uid"] == "eaas-overview" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    used = {m for _, e in _expressions(dash) for m in promql_names(e)[0]}
    # the list: per-expert load, replicas per group, RPC latency and failures, TTFT/ITL, KV blocks,
    # preemptions/queue/refused, MemPool hit rate, tokens/s
    assert used >= {"eaas_gateway_tokens_routed_total", "eaas_gateway_expert_replicas",
                    "eaas_gateway_expert_rpc_seconds_bucket", "eaas_gateway_expert_rpc_failures_total",
                    "eaas_gateway_time_to_first_token_seconds_bucket", "eaas_gateway_inter_token_latency_seconds_bucket",
                    "eaas_gateway_kv_blocks_used", "eaas_gateway_kv_blocks_free", "eaas_gateway_preemptions_total",
                    "eaas_gateway_queue_depth", "eaas_gateway_requests_refused_total", "eaas_mempool_hits_total",
                    "eaas_mempool_misses_total", "eaas_gateway_generated_tokens_total"}


def test_every_dashboard_expression_names_only_exported_metrics_and_their_labels():
    series, metrics = exported_series(), registered_metrics()
    labels_of = {s: set(info.labels) for info in metrics.values() for s in info.series()}
    expressions = _expressions(_dashboard())
    assert len(expressions) > 20
    for where, expr in expressions:
        names, labels = promql_names(expr)
        assert names and names <= series, f"{where}: {sorted(names - series)} is not exported by eaas"
        allowed = TARGET_LABELS | {"le"} | set().union(*(labels_of[n] for n in names))
        assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} are not on {sorted(names)}"
