#!/usr/bin/env bash
# A single-node Kubernetes v1.20.2 on this machine, from Debian's packages and source only
# (docs/operator.md, "The Kubernetes testbed"):
#
#   bash scripts/k8s-testbed.sh build   # the five k8s commands from Debian's source package, the node's
#                                       # packages, kubectl and a static pause image (cached; idempotent)
#   bash scripts/k8s-testbed.sh path    # prints the binaries' folder (tests read EAAS_K8S_BIN or this)
#   bash scripts/k8s-testbed.sh up      # starts etcd, the control plane, containerd, a kubelet, kube-proxy
#                                       # and a cluster DNS; prints `export KUBECONFIG=...` and `export PATH=...`
#   bash scripts/k8s-testbed.sh image   # builds the eaas and Redis images, loads them into the node;
#                                       # prints `export EAAS_IMAGE=...` and `export EAAS_REDIS_IMAGE=...`
#   bash scripts/k8s-testbed.sh down    # stops all of it and removes everything `up` made
#
# The control-plane-only tier (tests/k8s_operator) starts its own apiserver per session on free ports;
# the cluster tier (tests/cluster) uses `up`. State lives in $EAAS_K8S_RUN (default /tmp/eaas-k8s).
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
CACHE_ROOT="${EAAS_CACHE:-$HOME/.cache/eaas}"
BIN_DIR="${EAAS_K8S_BIN:-$CACHE_ROOT/k8s-$K8S_VERSION}"
NODE_CACHE="${EAAS_K8S_NODE_CACHE:-$CACHE_ROOT/k8s-node}"
WORK_DIR="${EAAS_K8S_WORK:-$HOME/.cache/eaas/k8s-build}"
GO_BIN=/usr/lib/go-1.19/bin
# The control plane, and the node (scheduler, kubelet, kube-proxy) for the cluster tier.
COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

log() { echo "k8s-testbed: $*" >&2; }

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s"
REPO="$(cd "$SCRIPTS/../.." && pwd)"
# The cluster: one per machine (the kubelet's cgroups, /var/log/pods and KUBE-* chains are global).
RUN_DIR="${EAAS_K8S_RUN:-/tmp/eaas-k8s}"
NODE_IP="${EAAS_K8S_NODE_IP:-10.250.0.1}"  # a /32 on lo: the kubelet refuses a loopback node IP
NODE_NAME=eaas-node
API_PORT=6443
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
POD_CIDR=10.244.0.0/24
BRIDGE=eaas0
BRIDGE_IP=10.244.0.1
PAUSE_IMAGE=localhost/eaas/pause:3.2
CONTAINERD_SOCK="$RUN_DIR/containerd.sock"
# Images survive `down` here (an import of the eaas image takes a minute); containers do not.
CONTAINERD_ROOT="${EAAS_CONTAINERD_ROOT:-$CACHE_ROOT/containerd}"

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
kubectl_() { "$NODE_CACHE/kubectl" --kubeconfig "$RUN_DIR/admin.kubeconfig" "$@"; }
require_running() {
    [ -S "$CONTAINERD_SOCK" ] || { log "no cluster in $RUN_DIR: run \`bash $0 up\` first"; exit 1; }
}

# apt-get install whichever of the named Debian packages are not installed yet.
apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_packages() {
    apt_install_missing golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server etcd-client openssl rsync make
    # etcd-server's package starts a system etcd on 2379; the tests start their own on free ports.
    ($SUDO service etcd stop >/dev/null 2>&1 || true)
}

# What a node needs besides the k8s commands: the container runtime, CNI plugins, packet filtering,
# a C compiler for the pause binary, and the image tools (mmdebstrap, buildah).
NODE_PACKAGES="containerd runc containernetworking-plugins iptables conntrack gcc libc6-dev mmdebstrap buildah"

install_node_packages() {
    # shellcheck disable=SC2086  # a list of package names
    apt_install_missing $NODE_PACKAGES
    # A system containerd started by the package would hold the default socket and the k8s.io
    # namespace's images; the testbed runs its own with its own socket.
    ($SUDO service containerd stop >/dev/null 2>&1 || true)
}

# kubectl 1.20.2 from Debian's kubernetes-client, unpacked (not installed: a kubectl from another
# package may own /usr/bin/kubectl), and the pause image, built from scripts/k8s/pause.c.
build_node_files() {
    mkdir -p "$NODE_CACHE"
    if [ ! -x "$NODE_CACHE/kubectl" ]; then
        log "kubectl from Debian's kubernetes-client"
        local tmp
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download "kubernetes-client=$DEB_VERSION" >/dev/null 2>&1 \
            && dpkg-deb -x kubernetes-client_*.deb x)
        mv "$tmp/x/usr/bin/kubectl" "$NODE_CACHE/kubectl"
        rm -rf "$tmp"
    fi
    if [ ! -f "$NODE_CACHE/pause.tar" ] || [ "$SCRIPTS/pause.c" -nt "$NODE_CACHE/pause.tar" ]; then
        log "static pause image"
        gcc -static -Os -s -o "$NODE_CACHE/pause" "$SCRIPTS/pause.c"
        python3 "$SCRIPTS/oci_archive.py" "$NODE_CACHE/pause" "$PAUSE_IMAGE" "$NODE_CACHE/pause.tar"
    fi
}

# Downloads the source package with a private apt configuration: the system's sources stay untouched.
fetch_source() {
    local apt_dir="$WORK_DIR/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        > "$apt_dir/sources.list.d/debian-src.sources"
    cat > "$apt_dir/apt.conf" <<EOF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$apt_dir/sources.list.d";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
EOF
    export APT_CONFIG="$apt_dir/apt.conf"
    log "apt-get update (deb-src, private lists)"
    apt-get update -qq
    (cd "$WORK_DIR" && apt-get source --download-only "kubernetes=$DEB_VERSION" >/dev/null)
    unset APT_CONFIG
}

unpack_source() {
    local src="$WORK_DIR/src"
    rm -rf "$src"
    mkdir -p "$src"
    tar -xzf "$WORK_DIR/$ORIG_TARBALL" -C "$src" --strip-components=1
    # reflect2 v1.0.1 (vendored) crashes at run time on Go >= 1.18; Debian ships the fixed v1.0.2.
    local vend="$src/vendor/github.com/modern-go/reflect2"
    rm -f "$vend"/*.go "$vend"/*.s
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$vend"/
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vend"/ 2>/dev/null || true
    rm -f "$vend"/*_test.go
}

build_binaries() {
    local src="$WORK_DIR/src" gopath="$WORK_DIR/gopath"
    export PATH="$GO_BIN:$PATH" GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 GOFLAGS=
    export GOCACHE="$WORK_DIR/gocache"
    log "make gen_openapi"
    (cd "$src" && make gen_openapi >/dev/null)
    mkdir -p "$gopath/src/k8s.io"
    ln -sfn "$src" "$gopath/src/k8s.io/kubernetes"
    # As hack/lib/version.sh does: --version reads component-base, the /version endpoint client-go.
    local ldflags="-s -w" pkg
    for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
               k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
        ldflags="$ldflags -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
        ldflags="$ldflags -X $pkg.gitTreeState=clean"
    done
    mkdir -p "$BIN_DIR"
    for cmd in $COMMANDS; do
        log "go build $cmd"
        (cd "$gopath/src/k8s.io/kubernetes" && GO111MODULE=off GOPATH="$gopath" \
            go build -tags providerless -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$cmd.tmp" "./cmd/$cmd")
        mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
    done
}

build() {
    local cmd missing=""
    for cmd in $COMMANDS; do [ -x "$BIN_DIR/$cmd" ] || missing="$missing $cmd"; done
    install_node_packages
    build_node_files
    if [ -z "$missing" ]; then
        install_packages  # etcd is needed at run time even when the binaries are cached
        log "cached: $BIN_DIR"
        return 0
    fi
    install_packages
    mkdir -p "$WORK_DIR"
    [ -f "$WORK_DIR/$ORIG_TARBALL" ] || fetch_source
    unpack_source
    build_binaries
    "$BIN_DIR/kube-apiserver" --version
    # The 374 MB tree and 842 MB Go cache are only needed to build.
    rm -rf "$WORK_DIR/src" "$WORK_DIR/gopath" "$WORK_DIR/gocache"
    log "built: $BIN_DIR"
}

source "$SCRIPTS/pki.sh"
source "$SCRIPTS/configs.sh"
source "$SCRIPTS/node.sh"
source "$SCRIPTS/image.sh"

case "${1:-}" in
    build) build ;;
    path) echo "$BIN_DIR" ;;
    up) up ;;
    down) down ;;
    image) build_images ;;
    *) echo "usage: $0 build|path|up|down|image" >&2; exit 2 ;;
esac
