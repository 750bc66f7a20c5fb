#!/usr/bin/env bash
# Network and host faults between the lab's machines, sourced by the lab's
# scripts after lib.sh. Every fault is applied where the packets pass: one
# nftables `bridge` table (chaos) in the bridge's namespace, whose forward
# chain sees each frame with the veth it came in on (iifname lab-A-br) and
# the one it leaves by (oifname lab-B-br). Only IPv4 is dropped (`ether type
# ip`), so ARP still passes and a heal takes effect at once; the rules
# survive a container's reboot (the bridge side of its veth stays). The
# kernel has no netem: loss is `numgen random`, a slow link is a TBF qdisc on
# both ends of the host's veth, an isolated host has its bridge port down,
# and a frozen host has every process of its PID namespace stopped.
#
# faults_init installs the table and an EXIT trap that heals everything
# (heal_all), whatever the script dies of. Each fault also appends a mark to
# $MARKS (JSON lines, milliseconds since the epoch), which the history
# checker merges into the recorded history.

FROZEN_PIDS=()
SLOW_HOSTS=()
DOWN_HOSTS=()
# Whether a fault is on (heal_all marks a heal only then).
FAULTS_ON=

now_ms() { date +%s%3N; }

# mark TEXT: a fault mark in the history.
mark() {
    [[ $1 == heal ]] || FAULTS_ON=1
    [[ -n ${MARKS:-} ]] || return 0
    printf '{"mark":"%s","t":%s}\n' "$1" "$(now_ms)" >>"$MARKS"
}

br_nft() { ip netns exec lab-br nft "$@"; }

faults_init() {
    br_nft delete table bridge chaos 2>/dev/null || true
    br_nft add table bridge chaos
    br_nft add chain bridge chaos faults '{ type filter hook forward priority 0; policy accept; }'
    trap 'heal_all; [[ -n ${LAB_KEEP:-} ]] || teardown' EXIT
}

# port HOST: the bridge side of HOST's veth (the client host is "cli").
port() { echo "lab-$1-br"; }

# cut A B: frames from A to B are dropped (B still reaches A).
cut() {
    br_nft add rule bridge chaos faults iifname "$(port "$1")" oifname "$(port "$2")" ether type ip drop
    mark "cut $1->$2"
}

# cut_both A B: A and B no longer hear each other.
cut_both() { cut "$1" "$2"; cut "$2" "$1"; }

# lossy HOST PERCENT: each frame to or from HOST dropped with that chance.
lossy() {
    local p
    p=$(port "$1")
    br_nft add rule bridge chaos faults iifname "$p" ether type ip numgen random mod 100 lt "$2" drop
    br_nft add rule bridge chaos faults oifname "$p" ether type ip numgen random mod 100 lt "$2" drop
    mark "loss $2% $1"
}

# lossy_between A B PERCENT: loss on the A<->B path only, both ways.
lossy_between() {
    local a b
    a=$(port "$1") b=$(port "$2")
    br_nft add rule bridge chaos faults iifname "$a" oifname "$b" ether type ip numgen random mod 100 lt "$3" drop
    br_nft add rule bridge chaos faults iifname "$b" oifname "$a" ether type ip numgen random mod 100 lt "$3" drop
    mark "loss $3% $1<->$2"
}

# slow HOST RATE: HOST's link limited to RATE (e.g. 256kbit) both ways.
slow() {
    local tbf=(tbf rate "$2" burst 16kb latency 5s)
    tc -n lab-br qdisc replace dev "$(port "$1")" root "${tbf[@]}"
    tc -n "lab-$1" qdisc replace dev eth0 root "${tbf[@]}"
    SLOW_HOSTS+=("$1")
    mark "slow $2 $1"
}

# isolate HOST: its bridge port goes down (the host sees its link lost).
isolate() {
    ip -n lab-br link set "$(port "$1")" down
    DOWN_HOSTS+=("$1")
    mark "isolate $1"
}

# freeze HOST: SIGSTOP to every process of the container (its init
# included), sockets left open: a frozen VM.
freeze() {
    local init ns p
    init=$(init_pid "$1") || return 1
    ns=$(readlink "/proc/$init/ns/pid")
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/ns/pid" 2>/dev/null) == "$ns" ]] || continue
        kill -STOP "${p#/proc/}" 2>/dev/null && FROZEN_PIDS+=("${p#/proc/}")
    done
    mark "freeze $1"
}

thaw() {
    local p
    for p in "${FROZEN_PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
    FROZEN_PIDS=()
}

# heal_all: every fault above undone; marks "heal" when something was on.
heal_all() {
    local h
    thaw
    br_nft flush chain bridge chaos faults 2>/dev/null || true
    for h in "${DOWN_HOSTS[@]}"; do ip -n lab-br link set "$(port "$h")" up 2>/dev/null || true; done
    for h in "${SLOW_HOSTS[@]}"; do
        tc -n lab-br qdisc del dev "$(port "$h")" root 2>/dev/null || true
        tc -n "lab-$h" qdisc del dev eth0 root 2>/dev/null || true
    done
    DOWN_HOSTS=()
    SLOW_HOSTS=()
    [[ -z $FAULTS_ON ]] || mark heal
    FAULTS_ON=
}
