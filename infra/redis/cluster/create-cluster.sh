#!/bin/sh
# Forms a Redis Cluster from nodes started with cluster-enabled, with plain redis-cli commands:
# CLUSTER MEET (every node meets the first), CLUSTER ADDSLOTSRANGE (the 16384 slots in even
# ranges over the first $MASTERS nodes), CLUSTER REPLICATE (node $MASTERS+i follows master i).
# Run by the Job redis-cluster-create (infra/redis/cluster/create-job.yaml) and by
# tests/infra/test_redis_cluster.py against local Valkey nodes.
#
# Safe to run again: a cluster that is already formed (cluster_state:ok on the first node) is
# left alone, so a failover that swapped roles is never undone; a run that died half way is
# finished (a node that already holds slots or follows its master is skipped).
#
#   NODES    "host:port host:port ...": the masters first, then one replica per master
#   MASTERS  how many of NODES are masters
#   REDISCLI_AUTH  the password, if the nodes have one (redis-cli reads it)
set -eu
: "${NODES:?NODES must list the nodes, host:port separated by spaces}"
: "${MASTERS:?MASTERS must say how many of NODES are masters}"
TIMEOUT_S=${TIMEOUT_S:-300}

cli() {
    node=$1
    shift
    redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

field() { # field NODE NAME: a field of CLUSTER INFO
    cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

waited=0
wait_a_second() {
    waited=$((waited + 1))
    if [ "$waited" -gt "$TIMEOUT_S" ]; then
        echo "gave up after ${TIMEOUT_S}s: $1" >&2
        exit 1
    fi
    sleep 1
}

set -- $NODES
count=$#
first=$1
if [ "$count" -lt "$MASTERS" ] || [ "$MASTERS" -lt 1 ]; then
    echo "MASTERS=$MASTERS but NODES lists $count nodes" >&2
    exit 1
fi

for node in $NODES; do
    until [ "$(cli "$node" ping 2>/dev/null)" = PONG ]; do wait_a_second "$node does not answer PING"; done
done

if [ "$(field "$first" cluster_state)" = ok ]; then
    echo "the cluster is formed already: $(field "$first" cluster_known_nodes) nodes, leaving it alone"
    exit 0
fi

# CLUSTER MEET takes an IP address, not a name.
first_ip=$(getent hosts "${first%:*}" | { read -r ip _ && echo "$ip"; })
for node in $NODES; do
    [ "$node" = "$first" ] || cli "$node" cluster meet "$first_ip" "${first##*:}" >/dev/null
done

i=0
for node in $NODES; do
    [ "$i" -lt "$MASTERS" ] || break
    lo=$((i * 16384 / MASTERS))
    hi=$(((i + 1) * 16384 / MASTERS - 1))
    # CLUSTER NODES: id, address, flags, master, ping, pong, epoch, link, then its slots
    if [ "$(cli "$node" cluster nodes | grep myself | wc -w)" -gt 8 ]; then
        echo "$node holds slots already"
    else
        cli "$node" cluster addslotsrange "$lo" "$hi" >/dev/null
        echo "$node: slots $lo-$hi"
    fi
    i=$((i + 1))
done

i=0
for node in $NODES; do
    if [ "$i" -ge "$MASTERS" ]; then
        eval "master=\${$((i % MASTERS + 1))}"
        id=$(cli "$master" cluster myid | tr -d '\r')
        # A replica can follow its master once the gossip of MEET has told it about it.
        until cli "$node" cluster nodes | grep myself | grep -q "$id" ||
            [ "$(cli "$node" cluster replicate "$id" 2>&1)" = OK ]; do
            wait_a_second "$node cannot follow $master"
        done
        echo "$node follows $master"
    fi
    i=$((i + 1))
done

for node in $NODES; do
    until [ "$(field "$node" cluster_state)" = ok ] &&
        [ "$(field "$node" cluster_known_nodes)" = "$count" ]; do
        wait_a_second "$node does not see a whole cluster"
    done
done
echo "cluster formed: $MASTERS masters, $((count - MASTERS)) replicas"
