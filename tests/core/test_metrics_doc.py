"""docs/metrics.md's table is the metric-name contract: it lists exactly what the code registers."""

from __future__ import annotations

from metrics_catalog import METRICS_DOC, documented_metrics, registered_metrics


def test_the_table_lists_every_registered_metric_with_its_type_and_labels():
    registered, documented = registered_metrics(), documented_metrics()
    assert sorted(set(registered) - set(documented)) == [], "registered but not in docs/metrics.md"
    assert sorted(set(documented) - set(registered)) == [], "in docs/metrics.md but registered nowhere"
    for name, info in registered.items():
        assert documented[name] == info, f"docs/metrics.md row of {name}"


def test_a_wrong_row_is_seen():
    text = METRICS_DOC.read_text()
    wrong = text.replace("| `eaas_gateway_queue_depth` | gauge |", "| `eaas_gateway_queue_depth` | counter |")
    wrong = wrong.replace("| `eaas_gateway_expert_replicas` | gauge | `group`, `experts`, `state` |",
                          "| `eaas_gateway_expert_replicas` | gauge | `group`, `state` |")
    assert wrong != text
    rows = documented_metrics(wrong)
    assert rows["eaas_gateway_queue_depth"] != registered_metrics()["eaas_gateway_queue_depth"]
    assert rows["eaas_gateway_expert_replicas"].labels == ("group", "state")


def test_names_follow_prometheus_conventions():
    for name, info in registered_metrics().items():
        assert name.startswith("eaas_"), name
        assert name.endswith("_total") == (info.type == "counter"), name
        assert "le" not in info.labels and "quantile" not in info.labels, name
        if "latency" in name or "time" in name:
            assert name.endswith("_seconds"), name
