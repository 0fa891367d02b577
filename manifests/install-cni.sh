#!/bin/sh
# brindle's install-cni step, run by the DaemonSet's init container on every node: copies the
# CNI plugins into the host's CNI bin directory (atomically, so a runtime never executes a
# half-written binary) and writes the network configuration list from CNI_NETWORK_CONFIG with
# its placeholders filled in, the datastore as the plugin on the host reaches it. Safe to run
# again; it only replaces what differs.
set -eu

bin_src=${BRINDLE_BIN_DIR:-/usr/local/bin}
bin_dst=${HOST_CNI_BIN_DIR:-/host/opt/cni/bin}
net_dst=${HOST_CNI_NET_DIR:-/host/etc/cni/net.d}
conf_name=${CNI_CONF_NAME:-10-brindle.conflist}
: "${CNI_NETWORK_CONFIG:?CNI_NETWORK_CONFIG must hold the conflist template}"
: "${KUBERNETES_NODE_NAME:?KUBERNETES_NODE_NAME must be the node name}"

mkdir -p "$bin_dst" "$net_dst"
for plugin in brindle brindle-ipam; do
    if ! cmp -s "$bin_src/$plugin" "$bin_dst/$plugin"; then
        cp "$bin_src/$plugin" "$bin_dst/.$plugin.new"
        chmod 0755 "$bin_dst/.$plugin.new"
        mv -f "$bin_dst/.$plugin.new" "$bin_dst/$plugin"
        echo "install-cni: installed $bin_dst/$plugin"
    fi
done

# The datastore as the plugin on the host reaches it. The Kubernetes API in-cluster becomes the
# kubeconfig brindle-node keeps for the plugin; etcd's TLS files, mounted in this container,
# are copied next to the conflist and named there.
net_on_host=${HOST_CNI_NET_DIR_ON_HOST:-/etc/cni/net.d}
datastore=${BRINDLE_DATASTORE:-kubernetes://}
case "$datastore" in
    kubernetes://|kubernetes://\?*) datastore="kubernetes://$net_on_host/brindle-kubeconfig${datastore#kubernetes://}" ;;
esac
tls_src=${BRINDLE_ETCD_TLS_DIR:-/etc/brindle/etcd}
case "$datastore" in
    *"$tls_src/"*)
        mkdir -p "$net_dst/brindle-tls"
        for file in "$tls_src"/*; do
            [ -f "$file" ] || continue
            install -m 0600 "$file" "$net_dst/brindle-tls/.$(basename "$file").new"
            mv -f "$net_dst/brindle-tls/.$(basename "$file").new" "$net_dst/brindle-tls/$(basename "$file")"
        done
        datastore=$(printf '%s' "$datastore" | sed -e "s|$tls_src/|$net_on_host/brindle-tls/|g")
        ;;
esac

# Placeholders: __DATASTORE__, __KUBERNETES_NODE_NAME__, __CNI_MTU__ (0 = the agent's file),
# __KUBECONFIG_FILEPATH__ (the kubeconfig brindle-node keeps for the plugin, whatever the
# datastore: the plugin reads Pods there).
escape() { printf '%s' "$1" | sed -e 's/[\/&|]/\\&/g'; }
printf '%s\n' "$CNI_NETWORK_CONFIG" \
    | sed -e "s|__DATASTORE__|$(escape "$datastore")|g" \
          -e "s|__KUBECONFIG_FILEPATH__|$(escape "$net_on_host/brindle-kubeconfig")|g" \
          -e "s|__KUBERNETES_NODE_NAME__|$(escape "$KUBERNETES_NODE_NAME")|g" \
          -e "s|__CNI_MTU__|${CNI_MTU:-0}|g" \
    > "$net_dst/.$conf_name.new"
chmod 0600 "$net_dst/.$conf_name.new"
if cmp -s "$net_dst/.$conf_name.new" "$net_dst/$conf_name"; then
    rm -f "$net_dst/.$conf_name.new"
else
    mv -f "$net_dst/.$conf_name.new" "$net_dst/$conf_name"
    echo "install-cni: wrote $net_dst/$conf_name"
fi
