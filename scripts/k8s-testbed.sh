#!/usr/bin/env bash
# Builds the Kubernetes test control plane (kube-apiserver + kube-controller-manager v1.20.2) from
# Debian bookworm's source package, following /work/shared/docs/real-kubernetes.md.
#
#   bash scripts/k8s-testbed.sh build   # idempotent: does nothing when both binaries are cached
#   bash scripts/k8s-testbed.sh path    # prints the cache folder (tests read EAAS_K8S_BIN or this)
#
# The control plane itself is started per test session by tests/k8s_operator/conftest.py
# (etcd + apiserver + controller-manager on free ports, fresh certs in a temp dir).
set -euo pipefail

K8S_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
BIN_DIR="${EAAS_K8S_BIN:-$HOME/.cache/eaas/k8s-$K8S_VERSION}"
WORK_DIR="${EAAS_K8S_WORK:-$HOME/.cache/eaas/k8s-build}"
GO_BIN=/usr/lib/go-1.19/bin
# The control plane, and the node (scheduler, kubelet, kube-proxy) for the cluster tier.
COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

log() { echo "k8s-testbed: $*" >&2; }

install_packages() {
    local missing=()
    for pkg in golang-1.19-go golang-github-modern-go-reflect2-dev etcd-server etcd-client openssl rsync make; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # etcd-server's package starts a system etcd on 2379; the tests start their own on free ports.
    ($SUDO service etcd stop >/dev/null 2>&1 || true)
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

case "${1:-}" in
    build) build ;;
    path) echo "$BIN_DIR" ;;
    *) echo "usage: $0 build|path" >&2; exit 2 ;;
esac
