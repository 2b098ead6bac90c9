# Sourced by scripts/k8s-testbed.sh: certificates, tokens and kubeconfigs of the single-node cluster.
# Everything is made fresh per `up` in $RUN_DIR/pki; nothing is shared with the host.

make_pki() {
    local pki="$RUN_DIR/pki"
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 \
            -subj "/CN=eaas-testbed-ca" 2>/dev/null
        cat > apiserver.ext <<EOF
subjectAltName=IP:$NODE_IP,IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
        openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
            -subj "/CN=kube-apiserver" 2>/dev/null
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile apiserver.ext -out apiserver.crt 2>/dev/null
        # The apiserver's client certificate towards the kubelet (logs, exec, port-forward).
        openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
            -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
        openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -out kubelet-client.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        rm -f ./*.csr ./*.ext
    )
    : > "$pki/tokens.csv"
    local user
    for user in admin:system:masters kube-controller-manager: kube-scheduler: kube-proxy: kubelet:system:nodes; do
        local name="${user%%:*}" groups="${user#*:}" token login
        token=$(openssl rand -hex 16)
        case "$name" in
            admin) login=admin ;;
            kubelet) login="system:node:$NODE_NAME" ;;
            *) login="system:$name" ;;
        esac
        echo "$token,$login,$login,\"$groups\"" >> "$pki/tokens.csv"
        echo "$token" > "$pki/$name.token"
        write_kubeconfig "$RUN_DIR/$name.kubeconfig" "$token"
    done
}

write_kubeconfig() {
    cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: eaas-testbed
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$RUN_DIR/pki/ca.crt"}
users:
- name: user
  user: {token: "$2"}
contexts:
- name: eaas-testbed
  context: {cluster: eaas-testbed, user: user}
current-context: eaas-testbed
EOF
}
