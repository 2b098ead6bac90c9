#!/usr/bin/env bash
# Installs Debian's redis-server (the real server the MemPool tests run against), if missing.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
# The package starts a system service on 6379; tests start their own servers on free ports.
($SUDO service redis-server stop >/dev/null 2>&1 || true)
command -v redis-server
