"""The cluster tier's handles on the testbed: kubectl/helm as a user runs them, polling with deadlines.

The cluster is `bash scripts/k8s-testbed.sh up` (a kubelet, containerd, kube-proxy, a cluster DNS on
this machine); the host reaches pod IPs and ClusterIPs like a node of a real cluster does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "scripts" / "k8s-testbed.sh"
RUN_DIR = Path(os.environ.get("EAAS_K8S_RUN", "/tmp/eaas-k8s"))


def parse_exports(text: str) -> dict[str, str]:
    """`export NAME=value` lines (the testbed's output) as a dict; $PATH is expanded."""
    env = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            env[name] = value.replace("$PATH", os.environ.get("PATH", ""))
    return env


def testbed(verb: str, timeout: float) -> dict[str, str]:
    """Runs a testbed verb; its exports, or an error carrying its output."""
    done = subprocess.run(["bash", str(TESTBED), verb], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"k8s-testbed.sh {verb} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return parse_exports(done.stdout)


@dataclass
class Cluster:
    env: dict[str, str]

    def run(self, *argv: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def kubectl(self, *args: str, **kwargs) -> str:
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs) -> str:
        return self.run("helm", *args, **kwargs)

    def apply(self, manifest: dict | list[dict], namespace: str) -> str:
        items = manifest if isinstance(manifest, list) else [manifest]
        return self.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1",
                            "kind": "List", "items": items}))

    def get(self, kind: str, namespace: str, name: str = "", selector: str = "") -> dict:
        args = ["-n", namespace, "get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.kubectl(*args))

    def ready_pods(self, namespace: str, selector: str) -> list[dict]:
        """Running pods not being deleted whose Ready condition is True."""
        pods = self.get("pods", namespace, selector=selector)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp") and is_ready(p)]


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def wait_for(check, what: str, timeout: float = 120.0, interval: float = 0.25, diagnose=None):
    """Polls `check` until it returns something truthy; fails naming `what` (and diagnose()) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")


def metric(url: str, name: str) -> float:
    """Sum of every sample of a metric family on a /metrics page (0 when unreachable)."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))
