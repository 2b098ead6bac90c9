"""The testbed's cluster DNS: A records for <svc>.<ns>.svc.cluster.local, read from the API.

    python3 cluster_dns.py LISTEN_IP KUBECONFIG_TOKEN_FILE APISERVER_URL CA_FILE

CoreDNS is not packaged in Debian. This answers what the pods ask: a Service's ClusterIP, or every
ready endpoint of a headless Service; NXDOMAIN for any other name under cluster.local; a refusal for
names outside it (pods here never leave the machine). Answers carry TTL 0: no resolver caches a pod
that is gone. One API read per query is cheap at test rates.
"""
import json
import socket
import ssl
import struct
import sys
import urllib.request

SUFFIX = ".svc.cluster.local"
TYPE_A, CLASS_IN = 1, 1
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5


def parse_question(packet: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end offset of the question) of a query with one question."""
    qid, flags = struct.unpack("!HH", packet[:4])
    labels, pos = [], 12
    while packet[pos]:
        length = packet[pos]
        labels.append(packet[pos + 1:pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    qtype, _ = struct.unpack("!HH", packet[pos + 1:pos + 5])
    return qid, flags, ".".join(labels).lower(), qtype, pos + 5


def build_reply(packet: bytes, rcode: int, addresses: list[str]) -> bytes:
    qid, flags, _, _, end = parse_question(packet)
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR, AA, RD copied, RA
    header = struct.pack("!HHHHHH", qid, reply_flags, 1, len(addresses), 0, 0)
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 0, 4) + socket.inet_aton(ip)
                       for ip in addresses)
    return header + packet[12:end] + answers


def service_of(name: str) -> tuple[str, str] | None:
    """(namespace, service) for '<svc>.<ns>.svc.cluster.local', else None."""
    if not name.endswith(SUFFIX):
        return None
    parts = name[:-len(SUFFIX)].split(".")
    return (parts[1], parts[0]) if len(parts) == 2 else None


class Api:
    def __init__(self, url: str, token: str, ca: str):
        self.url, self.token = url, token
        self.context = ssl.create_default_context(cafile=ca)

    def one(self, namespace: str, resource: str, name: str) -> dict | None:
        """A list filtered by name: kube-proxy's role (whose token this uses) may list, not get."""
        path = f"/api/v1/namespaces/{namespace}/{resource}?fieldSelector=metadata.name%3D{name}"
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self.context, timeout=5) as response:
            items = json.load(response)["items"]
        return items[0] if items else None

    def addresses(self, namespace: str, service: str) -> list[str] | None:
        svc = self.one(namespace, "services", service)
        if svc is None:
            return None
        cluster_ip = svc["spec"].get("clusterIP", "None")
        if cluster_ip != "None":
            return [cluster_ip]
        endpoints = self.one(namespace, "endpoints", service) or {}
        return [address["ip"] for subset in endpoints.get("subsets") or []
                for address in subset.get("addresses") or []]


def answer(api: Api, packet: bytes) -> bytes:
    _, _, name, qtype, _ = parse_question(packet)
    if not name.endswith(".cluster.local"):
        return build_reply(packet, REFUSED, [])
    target = service_of(name)
    addresses = api.addresses(*target) if target else None
    if addresses is None:
        return build_reply(packet, NXDOMAIN, [])
    return build_reply(packet, NOERROR, addresses if qtype == TYPE_A else [])


def main() -> None:
    listen_ip, token_file, url, ca = sys.argv[1:5]
    with open(token_file) as f:
        token = f.read().strip()
    api = Api(url, token, ca)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen_ip, 53))
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(api, packet), peer)
        except Exception as error:  # a malformed query or an API hiccup must not stop the server
            print(f"cluster-dns: {error!r}", file=sys.stderr, flush=True)
            try:
                sock.sendto(build_reply(packet, SERVFAIL, []), peer)
            except Exception:
                pass


if __name__ == "__main__":
    main()
