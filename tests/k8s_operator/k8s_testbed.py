"""A real Kubernetes 1.20 control plane on 127.0.0.1 for tests: etcd + kube-apiserver + controller-manager.

Binaries come from `bash scripts/k8s-testbed.sh build` (cached in ~/.cache/eaas/k8s-1.20.2, or
$EAAS_K8S_BIN). Every start uses free ports and fresh certificates/tokens in a temporary folder.
No scheduler and no kubelet: Pods are created and stay Pending.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

K8S_BIN = Path(os.environ.get("EAAS_K8S_BIN", Path.home() / ".cache/eaas/k8s-1.20.2"))
HELM = Path(os.environ.get("EAAS_HELM", Path.home() / ".cache/eaas/helm/helm"))
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_tools() -> list[str]:
    """What the k8s tier needs but this machine lacks, with the command that provides it."""
    missing = []
    for binary in ("kube-apiserver", "kube-controller-manager"):
        if not os.access(K8S_BIN / binary, os.X_OK):
            missing.append(f"{K8S_BIN / binary} (run: bash scripts/k8s-testbed.sh build)")
    if not shutil.which("etcd"):
        missing.append("etcd (run: bash scripts/k8s-testbed.sh build)")
    if not os.access(HELM, os.X_OK):
        missing.append(f"{HELM} (run: bash scripts/install-helm.sh)")
    return missing


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certs(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=eaas-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
             "-keyout", "apiserver.key", "-out", "apiserver.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "apiserver.crt", cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


class ControlPlane:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eaas-k8s-"))
        self.port = _free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.ca_file = self.dir / "ca.crt"

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = self.dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc, log))

    def log_tail(self, name: str, lines: int = 30) -> str:
        for proc_name, _, log in self.procs:
            if proc_name == name:
                return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self, timeout: float = 90.0) -> None:
        d = self.dir
        _make_certs(d)
        kcm_token = secrets.token_hex(16)
        (d / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            f"{kcm_token},system:kube-controller-manager,kcm\n")
        client_port, peer_port = _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        self._spawn("etcd", [
            shutil.which("etcd"), "--data-dir", str(d / "etcd"), "--name", "test",
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer_port}"])
        self._spawn("kube-apiserver", [
            str(K8S_BIN / "kube-apiserver"), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
            f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}", f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
            f"--cert-dir={d / 'certs'}"])
        write_kubeconfig(self.kubeconfig, self.server, self.ca_file, "admin", self.admin_token)
        self._wait_ready(timeout)
        kcm_config = write_kubeconfig(d / "kcm.kubeconfig", self.server, self.ca_file,
                                      "system:kube-controller-manager", kcm_token)
        self._spawn("kube-controller-manager", [
            str(K8S_BIN / "kube-controller-manager"), f"--kubeconfig={kcm_config}", "--port=0",
            "--secure-port=0", "--use-service-account-credentials=true", "--leader-elect=false",
            f"--service-account-private-key-file={d / 'sa.key'}", f"--root-ca-file={d / 'ca.crt'}",
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-persistentvolume-binder"])

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(f"{self.server}/readyz",
                                         headers={"Authorization": f"Bearer {self.admin_token}"})
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc, _ in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s ({last}):\n{self.log_tail('kube-apiserver')}")

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
