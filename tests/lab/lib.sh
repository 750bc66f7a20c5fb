#!/usr/bin/env bash
# The lab's machinery, sourced by run.sh and partitions.sh: the containers' and
# namespaces' life cycle, running commands inside a container, the
# deployment with ansible, and the PASS/FAIL bookkeeping. See run.sh for the
# lab's layout.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB=${LAB_DIR:-/var/lib/biblioteca-lab}
# Playbook logs and the containers' consoles are kept here after teardown.
LOGS=${LAB_LOGS:-/tmp/biblioteca-lab-logs}
BUILD_DIR=${BUILD_DIR:-$ROOT/target/debug}
NET=10.77.0
declare -A ADDR=([db1]=11 [db2]=12 [db3]=13 [app]=21 [act]=22)
HOSTS=(db1 db2 db3 app act)
# The client host: a network namespace without a container, on the same
# bridge, from which the fault scenarios' workload and checker run (so cutting
# the actors' host does not cut the client).
CLIENT_NS=lab-cli
CLIENT_ADDR=$NET.30
PASSED=0
FAILED=0

log() { printf '== %s\n' "$*" >&2; }

# phase NAME: logs how long the previous phase took, then NAME.
phase() {
    if [[ -n ${PHASE:-} ]]; then log "phase '$PHASE' took $((SECONDS - PHASE_START))s"; fi
    PHASE=$1
    PHASE_START=$SECONDS
    if [[ -n $PHASE ]]; then log "$PHASE"; fi
}

# ---------------------------------------------------------------- teardown

teardown() {
    local h pid
    for h in "${HOSTS[@]}"; do
        if [[ -f $LAB/$h.pid ]]; then
            pid=$(cat "$LAB/$h.pid")
            # SIGTERM asks systemd-nspawn for a clean container shutdown.
            kill "$pid" 2>/dev/null || true
        fi
    done
    for h in "${HOSTS[@]}"; do
        if [[ -f $LAB/$h.pid ]]; then
            pid=$(cat "$LAB/$h.pid")
            for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        ip netns del "lab-$h" 2>/dev/null || true
    done
    ip netns del "$CLIENT_NS" 2>/dev/null || true
    ip netns del lab-br 2>/dev/null || true
    rm -rf "$LAB"
}

# ---------------------------------------------------------------- checks

check() {
    local name=$1 start=$SECONDS
    shift
    if "$@"; then
        printf 'PASS %s (%ss)\n' "$name" $((SECONDS - start))
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL %s (%ss)\n' "$name" $((SECONDS - start))
        FAILED=$((FAILED + 1))
    fi
}

# The host PID of a container's init (systemd).
init_pid() {
    local nspawn child
    nspawn=$(cat "$LAB/$1.pid")
    for child in $(cat /proc/"$nspawn"/task/*/children 2>/dev/null); do
        if [[ $(cat /proc/"$child"/comm 2>/dev/null) == systemd ]]; then
            echo "$child"
            return 0
        fi
    done
    return 1
}

# on HOST COMMAND: runs a shell command inside a container.
on() {
    local pid
    pid=$(init_pid "$1") || return 1
    nsenter --target "$pid" --mount --uts --ipc --net --pid -- /bin/sh -c "$2"
}

sql() { on "$1" "runuser -u postgres -- psql -X -d library -tAc \"$2\""; }

eventually() {
    local tries=$1
    shift
    for _ in $(seq 1 "$tries"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    "$@"
}

# ---------------------------------------------------------------- setup

prerequisites() {
    local missing=()
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v ansible-playbook >/dev/null || missing+=(ansible)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    [[ -x /usr/lib/postgresql/15/bin/postgres ]] || missing+=(postgresql-15)
    if ((${#missing[@]})); then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    for b in carga actor almacenamiento solicitante failover claves; do
        [[ -x $BUILD_DIR/biblioteca-$b ]] || { echo "missing $BUILD_DIR/biblioteca-$b: cargo build --workspace (--release for target/release)"; exit 2; }
    done
}

# A copy of the binaries, so a build running meanwhile in the work tree
# changes nothing between the two site.yml runs.
snapshot_binaries() {
    mkdir -p "$LAB/build"
    cp "$BUILD_DIR"/biblioteca-{carga,actor,almacenamiento,solicitante,failover,claves} "$LAB/build/"
}

network() {
    ip netns add lab-br
    ip -n lab-br link add br0 type bridge
    ip -n lab-br link set br0 up
    local h
    for h in "${HOSTS[@]}"; do
        ip netns add "lab-$h"
        ip -n "lab-$h" link set lo up
        ip link add "lab-$h-br" type veth peer name "lab-$h-eth"
        ip link set "lab-$h-br" netns lab-br
        ip link set "lab-$h-eth" netns "lab-$h"
        ip -n lab-br link set "lab-$h-br" master br0 up
        ip -n "lab-$h" link set "lab-$h-eth" name eth0
        ip -n "lab-$h" addr add "$NET.${ADDR[$h]}/24" dev eth0
        ip -n "lab-$h" link set eth0 up
    done
    ip netns add "$CLIENT_NS"
    ip -n "$CLIENT_NS" link set lo up
    ip link add lab-cli-br type veth peer name lab-cli-eth
    ip link set lab-cli-br netns lab-br
    ip link set lab-cli-eth netns "$CLIENT_NS"
    ip -n lab-br link set lab-cli-br master br0 up
    ip -n "$CLIENT_NS" link set lab-cli-eth name eth0
    ip -n "$CLIENT_NS" addr add "$CLIENT_ADDR/24" dev eth0
    ip -n "$CLIENT_NS" link set eth0 up
}

rootfs() {
    local r=$LAB/$1 d
    mkdir -p "$r"/{etc,usr,var/lib,var/log,var/tmp,run,tmp,root,home,proc,sys,dev}
    chmod 1777 "$r/tmp" "$r/var/tmp"
    cp -a /etc/. "$r/etc/"
    # nspawn looks for os-release before /usr is bound.
    rm -f "$r/etc/os-release" "$r/etc/machine-id"
    cp /usr/lib/os-release "$r/etc/os-release"
    : >"$r/etc/fstab"
    echo "$1" >"$r/etc/hostname"
    printf '127.0.0.1 localhost %s\n' "$1" >"$r/etc/hosts"
    # Fresh PostgreSQL and biblioteca state: none of the host's.
    rm -rf "$r/etc/postgresql" "$r/etc/biblioteca"
    mkdir -p "$r/etc/postgresql"
    find "$r/etc/systemd/system" -name 'pg_receivewal*' -delete
    for d in bin lib lib64 sbin; do ln -s "usr/$d" "$r/$d"; done
    # As in Debian's base-files: tmpfiles creates these too, but only when
    # nothing made /var/run a directory first (PostgreSQL's start can race it,
    # and its PID file then lands outside /run where systemd never finds it).
    ln -s ../run "$r/var/run"
    ln -s ../run/lock "$r/var/lock"
    # ansible installs the binaries into /usr/local/bin: writable, per host.
    mkdir -p "$LAB/$1.usr-local/bin"
}

boot() {
    systemd-nspawn -D "$LAB/$1" --boot --register=no --keep-unit --machine="lab-$1" \
        --network-namespace-path="/run/netns/lab-$1" --bind-ro=/usr \
        --bind="$LAB/$1.usr-local:/usr/local" \
        >"$LOGS/$1.console" 2>&1 </dev/null &
    echo $! >"$LAB/$1.pid"
}

booted() {
    local state
    state=$(on "$1" "systemctl is-system-running --wait" 2>/dev/null) || true
    [[ $state == running || $state == degraded ]]
}

inventory() {
    local h
    {
        echo "[db_primary]"
        echo "db1 ansible_host=$NET.11 ansible_nsenter_pid=$(init_pid db1) biblioteca_pg_node_name=primary"
        echo "[db_standby]"
        echo "db2 ansible_host=$NET.12 ansible_nsenter_pid=$(init_pid db2) biblioteca_pg_node_name=standby"
        echo "db3 ansible_host=$NET.13 ansible_nsenter_pid=$(init_pid db3) biblioteca_pg_node_name=standby2"
        echo "[almacenamiento]"
        echo "app ansible_host=$NET.21 ansible_nsenter_pid=$(init_pid app)"
        echo "[carga]"
        echo "app"
        echo "[actores]"
        echo "act ansible_host=$NET.22 ansible_nsenter_pid=$(init_pid act)"
        echo "[clients]"
        echo "act"
        echo "[postgresql:children]"
        echo "db_primary"
        echo "db_standby"
        echo "[all:vars]"
        echo "ansible_connection=community.docker.nsenter"
        echo "ansible_become=false"
        echo "ansible_python_interpreter=/usr/bin/python3"
        echo "biblioteca_pg_install=false"
        echo "biblioteca_build_dir=$LAB/build"
    } >"$LAB/inventory.ini"
    cat >"$LAB/secrets.yml" <<'EOF'
biblioteca_db_password: lab-app-secret
biblioteca_owner_password: lab-owner-secret
biblioteca_replication_password: lab-replication-secret
biblioteca_pg_admin_password: lab-admin-secret
EOF
    chmod 0600 "$LAB/secrets.yml"
}

playbook() {
    ANSIBLE_CONFIG=$ROOT/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ansible-playbook \
        -i "$LAB/inventory.ini" -e "@$LAB/secrets.yml" "${@:3}" "$ROOT/ansible/$1" >"$LOGS/$2.log" 2>&1
    local rc=$?
    sed -n '/PLAY RECAP/,$p' "$LOGS/$2.log" >&2
    return $rc
}

second_run_changes_nothing() {
    playbook site.yml site-2 || return 1
    ! sed -n '/PLAY RECAP/,$p' "$LOGS/site-2.log" | grep -q 'changed=[1-9]'
}


units_active() {
    on app "systemctl is-active biblioteca-almacenamiento.service biblioteca-carga.service" &&
        on act "systemctl is-active biblioteca-actor@prestamo.service biblioteca-actor@devolucion.service biblioteca-actor@renovacion.service"
}

replicating_synchronously() {
    [[ $(sql db1 "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication") == standby:quorum,standby2:quorum ]]
}


# lab_up: a fresh lab, deployed by site.yml, every service active and the
# primary replicating to both standbys.
lab_up() {
    prerequisites
    teardown
    mkdir -p "$LAB"
    rm -rf "$LOGS" && mkdir -p "$LOGS"
    snapshot_binaries
    phase "network namespaces and bridge"
    network
    local h
    for h in "${HOSTS[@]}"; do rootfs "$h"; boot "$h"; done
    phase "booting ${HOSTS[*]}"
    for h in "${HOSTS[@]}"; do check "$h boots" eventually 60 booted "$h"; done
    inventory
    phase "ansible-playbook site.yml"
    check "site.yml deploys" playbook site.yml site-1
}
