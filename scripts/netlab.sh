#!/usr/bin/env bash
# The network lab for humans: the same layout the tests build with the
# plumb-netlab crate. A node namespace with a bridge, and "pod" namespaces
# joined to it by veths, with addresses that exist only inside the lab and
# no route out of it.
#
#   sudo scripts/netlab.sh up [PODS]     # default 2 pods: lab-p1 (10.250.0.2), lab-p2 (10.250.0.3)
#   sudo scripts/netlab.sh down
#   nsenter --net=/run/netns/lab-p1 ping 10.250.0.3
set -euo pipefail
cmd=${1:-}
n=${2:-2}
case "$cmd" in
up)
    ip netns add lab-node
    ip -n lab-node link set lo up
    ip -n lab-node link add br0 type bridge
    ip -n lab-node addr add 10.250.0.1/24 dev br0
    ip -n lab-node link set br0 up
    for i in $(seq 1 "$n"); do
        ns=lab-p$i
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add eth0 netns "$ns" type veth peer name vp$i netns lab-node
        ip -n lab-node link set vp$i master br0
        ip -n lab-node link set vp$i up
        ip -n "$ns" addr add 10.250.0.$((i + 1))/24 dev eth0
        ip -n "$ns" link set eth0 up
        echo "$ns: 10.250.0.$((i + 1))"
    done
    ;;
down)
    for ns in $(ip netns list | awk '/^lab-(node|p[0-9]+)/ {print $1}'); do
        ip netns del "$ns"
    done
    ;;
*)
    echo "usage: $0 up [PODS] | down" >&2
    exit 2
    ;;
esac
