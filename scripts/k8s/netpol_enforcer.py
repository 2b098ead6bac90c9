"""The testbed's NetworkPolicy enforcer: polls the API, loads the rules netpol_rules.py computes.

    python3 netpol_enforcer.py TOKEN_FILE APISERVER_URL CA_FILE POD_CIDR

Every second it lists NetworkPolicies, Pods and Namespaces and, when the rules change, replaces the
chain EAAS-NETPOL with `iptables-restore --noflush`; a rule first in FORWARD sends traffic to pod IPs
through it. Bridged pod-to-pod traffic reaches FORWARD because `up` sets bridge-nf-call-iptables=1.
`down` stops this process and restores the host's iptables snapshot, which removes the chain and hook.
"""
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netpol_rules import CHAIN, allowed_flows, restore_text  # noqa: E402

POLL_SECONDS = 1.0


class Api:
    def __init__(self, url: str, token: str, ca: str):
        self.url, self.token = url, token
        self.context = ssl.create_default_context(cafile=ca)

    def items(self, path: str) -> list[dict]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
            return json.load(response)["items"]


def hook(pod_cidr: str) -> list[str]:
    return ["FORWARD", "-d", pod_cidr, "-j", CHAIN]


def ensure_hook(pod_cidr: str) -> None:
    """The jump first in FORWARD, before any ACCEPT that kube-proxy or the CNI add."""
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True).stdout
    first = next((line for line in rules.splitlines() if line.startswith("-A ")), "")
    if first != f"-A FORWARD -d {pod_cidr} -j {CHAIN}":
        subprocess.run(["iptables", "-D", *hook(pod_cidr)], capture_output=True)
        subprocess.run(["iptables", "-I", *hook(pod_cidr)[:1], "1", *hook(pod_cidr)[1:]], check=True)


def main() -> None:
    token_file, url, ca, pod_cidr = sys.argv[1:5]
    with open(token_file) as f:
        api = Api(url, f.read().strip(), ca)
    loaded = None
    while True:
        try:
            flows = allowed_flows(api.items("/apis/networking.k8s.io/v1/networkpolicies"),
                                  api.items("/api/v1/namespaces"), api.items("/api/v1/pods"))
            text = restore_text(flows)
            if text != loaded:
                subprocess.run(["iptables-restore", "--noflush"], input=text, text=True, check=True)
                ensure_hook(pod_cidr)
                loaded = text
                print(f"netpol: {len(flows)} isolated pods, {text.count(chr(10)) - 3} rules", flush=True)
            else:
                ensure_hook(pod_cidr)
        except Exception as error:  # an API hiccup: keep the rules loaded, try again
            print(f"netpol: {error!r}", file=sys.stderr, flush=True)
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    main()
