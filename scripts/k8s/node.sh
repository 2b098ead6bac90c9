# Sourced by scripts/k8s-testbed.sh: `up` and `down` of the single-node cluster.
# Every process runs in its own session with a pid file in $RUN_DIR/pids; `down` stops them by pid
# and removes exactly what `up` made (addresses, bridge, netns, mounts, cgroups, iptables, sysctls).

SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
kernel.keys.root_maxbytes net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables
net.ipv4.conf.all.route_localnet"
CGROUP_TOP=kubepods

start_daemon() {  # NAME CMD...: runs CMD in its own session, logs in $RUN_DIR/logs/NAME.log
    local name="$1"
    shift
    setsid "$@" > "$RUN_DIR/logs/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN_DIR/pids/$name"
}

wait_for() {  # SECONDS DESCRIPTION CMD...: polls CMD until it succeeds
    local deadline=$((SECONDS + $1)) what="$2"
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "timed out waiting for $what; logs in $RUN_DIR/logs"
            return 1
        fi
        sleep 0.5
    done
}

daemons_alive() {  # every daemon `up` started still runs (one that died at start is a failed `up`)
    local file dead=""
    for file in "$RUN_DIR"/pids/*; do [ -d "/proc/$(cat "$file")" ] || dead="$dead $(basename "$file")"; done
    [ -z "$dead" ] || { log "died:$dead (logs in $RUN_DIR/logs)"; return 1; }
}
services_programmed() { iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q "$SERVICE_IP/32"; }
api_ready() { curl -sf --cacert "$RUN_DIR/pki/ca.crt" -H "Authorization: Bearer $(cat "$RUN_DIR/pki/admin.token")" \
    "https://$NODE_IP:$API_PORT/readyz" | grep -qx ok; }
node_ready() { kubectl_ get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }
default_sa() { kubectl_ -n default get serviceaccount default; }

save_host_state() {
    local key
    : > "$RUN_DIR/sysctls.before"
    for key in $SYSCTLS; do
        sysctl -n "$key" >/dev/null 2>&1 && echo "$key=$(sysctl -n "$key")" >> "$RUN_DIR/sysctls.before"
    done
    iptables-save > "$RUN_DIR/iptables.before"
    ip6tables-save > "$RUN_DIR/ip6tables.before" 2>/dev/null || true
    ls /run/netns 2>/dev/null > "$RUN_DIR/netns.before" || true
    [ -d /var/log/pods ] && echo yes > "$RUN_DIR/podlogs.before" || echo no > "$RUN_DIR/podlogs.before"
}

setup_network() {
    ip addr add "$NODE_IP/32" dev lo
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # The host reaches ClusterIPs from the bridge's address, never from the machine's own interface.
    ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"
    # Bridged pod-to-pod packets through iptables: kube-proxy's hairpin and the NetworkPolicy enforcer.
    [ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 2>/dev/null \
        || { sysctl -qw net.ipv4.ip_forward=1; log "no br_netfilter: NetworkPolicies will not be enforced"; }
}

start_control_plane() {
    local kb="$BIN_DIR"
    start_daemon etcd etcd --name eaas-testbed --data-dir "$RUN_DIR/etcd" \
        --listen-client-urls "http://$NODE_IP:2379" --advertise-client-urls "http://$NODE_IP:2379" \
        --listen-peer-urls "http://$NODE_IP:2380" --initial-advertise-peer-urls "http://$NODE_IP:2380" \
        --initial-cluster "eaas-testbed=http://$NODE_IP:2380" --listen-metrics-urls ""
    wait_for 60 etcd curl -sf "http://$NODE_IP:2379/health"
    start_daemon kube-apiserver "$kb/kube-apiserver" --etcd-servers="http://$NODE_IP:2379" \
        --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" --insecure-port=0 \
        --tls-cert-file="$RUN_DIR/pki/apiserver.crt" --tls-private-key-file="$RUN_DIR/pki/apiserver.key" \
        --client-ca-file="$RUN_DIR/pki/ca.crt" --token-auth-file="$RUN_DIR/pki/tokens.csv" \
        --kubelet-client-certificate="$RUN_DIR/pki/kubelet-client.crt" \
        --kubelet-client-key="$RUN_DIR/pki/kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP \
        --authorization-mode=Node,RBAC --allow-privileged=true \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$RUN_DIR/pki/sa.pub" \
        --service-account-signing-key-file="$RUN_DIR/pki/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767
    wait_for 120 kube-apiserver api_ready
    # nodeipam off (one node, the CNI config fixes the pod CIDR). nodelifecycle on: it lifts the
    # node.kubernetes.io/not-ready taint the kubelet registers with.
    # The PersistentVolume binder stays on: PVCs bind to the testbed's hostPath volumes.
    start_daemon kube-controller-manager "$kb/kube-controller-manager" \
        --kubeconfig="$RUN_DIR/kube-controller-manager.kubeconfig" --port=0 --secure-port=0 \
        --use-service-account-credentials=true --leader-elect=false \
        --service-account-private-key-file="$RUN_DIR/pki/sa.key" --root-ca-file="$RUN_DIR/pki/ca.crt" \
        --controllers='*,-nodeipam,-cloud-node-lifecycle'
    start_daemon kube-scheduler "$kb/kube-scheduler" --kubeconfig="$RUN_DIR/kube-scheduler.kubeconfig" \
        --port=0 --secure-port=0 --leader-elect=false
}

start_node() {
    start_daemon containerd containerd --config "$RUN_DIR/containerd/config.toml"
    wait_for 60 containerd ctr_ version
    remove_all_containers  # a previous run that was not taken down cleanly
    ctr_ images import "$NODE_CACHE/pause.tar" >/dev/null
    start_daemon kubelet "$BIN_DIR/kubelet" --config="$RUN_DIR/kubelet/config.yaml" \
        --kubeconfig="$RUN_DIR/kubelet.kubeconfig" --container-runtime=remote \
        --container-runtime-endpoint="unix://$CONTAINERD_SOCK" --root-dir="$RUN_DIR/kubelet" \
        --cert-dir="$RUN_DIR/kubelet/pki" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" --v=1
    start_daemon kube-proxy "$BIN_DIR/kube-proxy" --kubeconfig="$RUN_DIR/kube-proxy.kubeconfig" \
        --proxy-mode=iptables --bind-address="$NODE_IP" --cluster-cidr="$POD_CIDR" \
        --hostname-override="$NODE_NAME" --iptables-min-sync-period=100ms --conntrack-max-per-core=0 \
        --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
        --healthz-bind-address="$NODE_IP:10256" --metrics-bind-address="$NODE_IP:10249"
    start_daemon cluster-dns python3 "$SCRIPTS/cluster_dns.py" "$NODE_IP" "$RUN_DIR/pki/kube-proxy.token" \
        "https://$NODE_IP:$API_PORT" "$RUN_DIR/pki/ca.crt"
    # NetworkPolicies: the CNI plugins enforce none (scripts/k8s/netpol_enforcer.py).
    start_daemon netpol python3 "$SCRIPTS/netpol_enforcer.py" "$RUN_DIR/pki/admin.token" \
        "https://$NODE_IP:$API_PORT" "$RUN_DIR/pki/ca.crt" "$POD_CIDR"
}
netpol_hooked() { iptables -S FORWARD 2>/dev/null | grep -q -- "-j EAAS-NETPOL"; }

up() {
    if [ -f "$RUN_DIR/pids/kube-apiserver" ] && daemons_alive; then
        # Running: a loaded machine may answer slowly, which is no reason to restart the cluster.
        wait_for 120 kube-apiserver api_ready
        log "already running in $RUN_DIR"
        print_env
        return 0
    fi
    build >&2
    [ ! -e "$RUN_DIR" ] || down >&2
    mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids" "$RUN_DIR/bin"
    ln -sfn "$NODE_CACHE/kubectl" "$RUN_DIR/bin/kubectl"
    ln -sfn "$(bash "$SCRIPTS/../install-helm.sh")" "$RUN_DIR/bin/helm"
    local started=$SECONDS
    save_host_state
    setup_network
    make_pki
    write_containerd_config
    write_kubelet_config
    start_control_plane
    start_node
    wait_for 120 "node Ready" node_ready
    wait_for 60 "default service account" default_sa
    wait_for 60 "kube-proxy to program Services" services_programmed
    wait_for 60 "the NetworkPolicy enforcer's chain" netpol_hooked
    daemons_alive
    log "cluster up in $((SECONDS - started)) s (run folder $RUN_DIR)"
    print_env
}

print_env() {
    echo "export KUBECONFIG=$RUN_DIR/admin.kubeconfig"
    echo "export PATH=$RUN_DIR/bin:\$PATH"
}

# Kills every container task of the node and removes the containers (sandboxes included), so no
# process, mount or snapshot of a pod survives; images stay for the next run.
remove_all_containers() {
    local ids id
    ids=$(ctr_ tasks ls -q 2>/dev/null || true)
    for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $ids; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do ctr_ tasks delete -f "$id" >/dev/null 2>&1 && break; sleep 0.3; done
    done
    for id in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers rm "$id" >/dev/null 2>&1 || true; done
}

stop_daemon() {  # NAME: SIGTERM, then SIGKILL after 3 s; only if the pid is still ours
    local file="$RUN_DIR/pids/$1" pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -d "/proc/$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$RUN_DIR\|$NODE_IP"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 12); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# containerd's shims are re-parented to init: find them by the socket path that only our containerd has.
stop_shims() {
    local pid
    for pid in $(grep -l -a -F "$CONTAINERD_SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
        [ "$pid" != "$$" ] && kill -9 "$pid" 2>/dev/null || true
    done
}

remove_mounts() {
    local mnt
    for mnt in $(awk -v run="$RUN_DIR" -v root="$CONTAINERD_ROOT" \
            'index($2, run) == 1 || index($2, root) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
    for mnt in $(ls /run/netns 2>/dev/null); do
        if ! grep -qx "$mnt" "$RUN_DIR/netns.before" 2>/dev/null; then
            umount -l "/run/netns/$mnt" 2>/dev/null || true
            rm -f "/run/netns/$mnt"
        fi
    done
}

remove_cgroups() {
    local dir
    for dir in /sys/fs/cgroup/*/"$CGROUP_TOP" /sys/fs/cgroup/"$CGROUP_TOP"; do
        [ -d "$dir" ] || continue
        find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
}

# Empties every table, then restores the snapshot `up` took: exactly the rules the machine had
# before (kubelet, kube-proxy and the CNI plugins add KUBE-*, CNI-* chains and hooks in several tables).
restore_iptables() {
    local cmd="$1" snapshot="$2" table chain
    [ -f "$snapshot" ] || return 0
    for table in filter nat mangle raw; do
        $cmd -t "$table" -F 2>/dev/null || continue
        $cmd -t "$table" -X
        for chain in $($cmd -t "$table" -S | awk '$1 == "-P" {print $2}'); do
            $cmd -t "$table" -P "$chain" ACCEPT
        done
    done
    $cmd-restore < "$snapshot"
}

restore_host_state() {
    restore_iptables iptables "$RUN_DIR/iptables.before"
    restore_iptables ip6tables "$RUN_DIR/ip6tables.before"
    if [ -f "$RUN_DIR/sysctls.before" ]; then
        local line
        while read -r line; do sysctl -qw "$line" 2>/dev/null || true; done < "$RUN_DIR/sysctls.before"
    fi
    ip link del "$BRIDGE" 2>/dev/null || true
    ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
    [ "$(cat "$RUN_DIR/podlogs.before" 2>/dev/null)" = no ] && rm -rf /var/log/pods /var/log/containers
    return 0
}

down() {
    [ -d "$RUN_DIR" ] || { log "nothing to stop ($RUN_DIR absent)"; return 0; }
    local started=$SECONDS
    stop_daemon kubelet
    stop_daemon kube-proxy
    if [ -f "$RUN_DIR/pids/containerd" ]; then remove_all_containers; fi
    stop_daemon containerd
    stop_shims
    for name in netpol cluster-dns kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_daemon "$name"; done
    remove_mounts
    remove_cgroups
    restore_host_state
    if iptables -S 2>/dev/null | grep -q EAAS-NETPOL; then log "left behind: iptables chain EAAS-NETPOL"; fi
    rm -rf "$RUN_DIR"
    log "cluster down in $((SECONDS - started)) s"
}
