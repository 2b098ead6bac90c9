"""The running operator's footprint: seconds from `eaas operator` to its first reconcile, and its resident
memory while it manages one MoEDeployment (refresh every second) on the 1.20 control-plane testbed.

    .venv/bin/python -P benchmarks/operator_running.py [--seconds 60]

Needs the testbed binaries (bash scripts/k8s-testbed.sh build) and redis-server. The chart gives the
operator a 256Mi limit; the issue measured 184 MiB idle and 216 MiB after 8 minutes while it loaded torch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests/k8s_operator")]

from k8s_testbed import ControlPlane  # noqa: E402
from servers import RedisServer  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to watch it run")
    args = parser.parse_args()
    import kubernetes

    plane, redis_server = ControlPlane(), RedisServer()
    plane.start()
    redis_server.start()
    operator = None
    try:
        kubectl = ["kubectl", f"--kubeconfig={plane.kubeconfig}"]
        subprocess.run([*kubectl, "apply", "-f", str(REPO / "charts/eaas/crds")], check=True, capture_output=True)
        subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd/moedeployments.eaas.dev"],
                       check=True, capture_output=True)
        custom = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(str(plane.kubeconfig)))
        custom.create_namespaced_custom_object("eaas.dev", "v1alpha1", "default", "moedeployments", {
            "apiVersion": "eaas.dev/v1alpha1", "kind": "MoEDeployment", "metadata": {"name": "mix"},
            "spec": {"image": "eaas:0.1.0", "model": {"uri": "/m", "numExperts": 8, "numLayers": 4},
                     "experts": {"expertsPerReplica": 4}, "autoscaling": {"intervalSeconds": 1}}})
        log = Path(tempfile.mkdtemp(prefix="eaas-operator-")) / "operator.log"
        start = time.monotonic()
        with open(log, "wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-P", "-m", "eaas.cli", "operator", "--standalone", "--namespace", "default",
                 "--redis-url", redis_server.url], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)})
        while "observedGeneration" not in (custom.get_namespaced_custom_object(
                "eaas.dev", "v1alpha1", "default", "moedeployments", "mix").get("status") or {}):
            if time.monotonic() - start > 120:
                raise TimeoutError(f"no reconcile after 120 s; log: {log}")
            time.sleep(0.1)
        first = time.monotonic() - start
        at_start = rss_mib(operator.pid)
        time.sleep(args.seconds)
        print(f"operator: first reconcile {first:.1f} s after start; RSS {at_start:.0f} MiB then, "
              f"{rss_mib(operator.pid):.0f} MiB after {args.seconds:.0f} s refreshing every second; "
              f"torch loaded: {'torch' in Path(f'/proc/{operator.pid}/maps').read_text()}")
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        redis_server.close()
        plane.stop()


if __name__ == "__main__":
    main()
