#!/usr/bin/env bash
# The network-fault scenarios of issue 22, sourced by run.sh (the core
# subset) and partitions.sh (all of them), after lib.sh and faults.sh.
#
# A scenario runs the workload of biblioteca-history from the client host
# (namespace lab-cli, the client's CURVE key) while a fault is on, heals it,
# resolves every unknown outcome through the load manager, snapshots every
# database node that was ever primary (before anything rejoins it) and
# checks the history: nothing acknowledged lost, nothing applied twice,
# nothing unresolved, copies conserved, at most one primary with a
# synchronous standby in any sampling round. Each run appends its row to
# $LAB/scenarios.jsonl; scenarios_table prints them.

HISTORY_BIN=${HISTORY_BIN:-$BUILD_DIR/biblioteca-history}
# The workload's books: many copies, so loans rarely run dry.
SCENARIO_BOOKS=8

history() { "$LAB/build/biblioteca-history" "$@"; }
in_client() { ip netns exec "$CLIENT_NS" "$@"; }

# scenarios_setup: the client host's configuration and the books.
scenarios_setup() {
    cp "$HISTORY_BIN" "$LAB/build/"
    mkdir -p "$LAB/cli"
    cat >"$LAB/cli/solicitante.toml" <<EOF
endpoints = ["tcp://$NET.${ADDR[app]}:5555"]
timeout = "3s"
retries = 1

[curve]
secret_key_file = "$LAB/act/etc/biblioteca/credentials/cliente.key_secret"
carga_key = "$LAB/act/etc/biblioteca/claves/carga/app.key"
EOF
    local isbns
    isbns=$(history isbns --count "$SCENARIO_BOOKS" --from 900 | sed "s/.*/'&'/" | paste -sd,)
    sql "$(current_primary)" "INSERT INTO libros (isbn, titulo, autor, ejemplares)
        SELECT i, 'Lab ' || i, 'Partition', 1000 FROM unnest(ARRAY[$isbns]) AS i
        ON CONFLICT DO NOTHING" >/dev/null
}

scenario_isbns() { sql "$(current_primary)" "SELECT isbn FROM libros WHERE titulo LIKE 'Lab %'"; }

# qsql HOST SQL [SECONDS]: sql with a bound (a frozen host never answers);
# fields separated by spaces.
qsql() {
    local pid
    [[ -f $LAB/$1.pid ]] || return 1
    pid=$(init_pid "$1") || return 1
    timeout "${3:-2}" nsenter --target "$pid" --mount --uts --ipc --net --pid -- \
        runuser -u postgres -- psql -X -d library -tAF' ' -c "$2" 2>/dev/null
}

# current_primary: the database host not in recovery that has standbys
# streaming to it (else any one not in recovery).
current_primary() {
    local h best=
    for h in db1 db2 db3; do
        [[ $(qsql "$h" 'SELECT pg_is_in_recovery()') == f ]] || continue
        best=${best:-$h}
        if [[ $(qsql "$h" 'SELECT count(*) FROM pg_stat_replication') -gt 0 ]]; then
            echo "$h"
            return 0
        fi
    done
    [[ -n $best ]] && echo "$best"
}

# sampler FILE: twice a second, every database node's role, timeline and
# synchronous standbys, as JSON lines (null: no answer within a second).
SAMPLE_SQL="SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery()
    THEN (SELECT received_tli FROM pg_stat_wal_receiver)
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
    (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))"
sampler() {
    local out=$1 round=0 h row r tl s
    while [[ -f $LAB/sampling ]]; do
        round=$((round + 1))
        for h in db1 db2 db3; do
            row=$(qsql "$h" "$SAMPLE_SQL" 1) || row=
            read -r r tl s <<<"$row"
            case $r in t) r=false ;; f) r=true ;; *) r=null ;; esac
            printf '{"t":%s,"round":%s,"node":"%s","primary":%s,"timeline":%s,"sync":%s}\n' \
                "$(now_ms)" "$round" "$h" "$r" "${tl:-null}" "${s:-null}" >>"$out"
        done
        sleep 0.5
    done
}

restarts() { on app "systemctl show -p NRestarts --value biblioteca-almacenamiento.service"; }

snapshot_node() {
    local h=$1 dir=$2 f
    mkdir -p "$dir"
    for f in solicitudes prestamos copies; do
        sql "$h" "$(history sql "$f")" >"$dir/$f" || return 1
    done
}

# scenario NAME SECONDS_BEFORE FAULT_FN SECONDS_AFTER [CLIENTS]: the
# workload runs throughout; FAULT_FN applies the fault, waits and heals (it
# is called with the primary's name).
scenario() {
    local name=$1 before=$2 fault=$3 after=$4 clients=${5:-5}
    local dir=$LAB/scenario-$name primary r0 r1 rc=0 wl isbn_args=() i
    # Ids and users unique to this run: a scenario may run again on one lab.
    local prefix="$name-$(($(date +%s) % 100000))-"
    rm -rf "$dir" && mkdir -p "$dir"
    export MARKS=$dir/marks.jsonl
    primary=$(current_primary) || { echo "$name: no primary"; return 1; }
    sql "$primary" "$(history sql copies)" >"$dir/initial"
    r0=$(restarts)
    for i in $(scenario_isbns); do isbn_args+=(--isbn "$i"); done
    : >"$LAB/sampling"
    sampler "$dir/samples.jsonl" &
    local sampler_pid=$!
    local total=$((before + FAULT_SECONDS + after))
    in_client "$LAB/build/biblioteca-history" run --config "$LAB/cli/solicitante.toml" \
        --prefix "$prefix" --clients "$clients" --seconds "$total" "${isbn_args[@]}" \
        --marks "$MARKS" --out "$dir/history.jsonl" ${SEED:+--seed "$SEED"} 2>"$dir/run.log" &
    wl=$!
    sleep "$before"
    "$fault" "$primary"
    heal_all
    wait "$wl" || { echo "$name: the workload failed: $(cat "$dir/run.log")"; rc=1; }
    rm -f "$LAB/sampling"
    wait "$sampler_pid" || true
    # Stragglers inside the services land before the lookups.
    sleep 3
    in_client "$LAB/build/biblioteca-history" resolve --config "$LAB/cli/solicitante.toml" \
        --history "$dir/history.jsonl" --out "$dir/resolved.jsonl" || { echo "$name: resolve failed"; return 1; }
    local final old=() h
    final=$(current_primary)
    for h in db1 db2 db3; do
        grep -q "\"node\":\"$h\",\"primary\":true" "$dir/samples.jsonl" || [[ $h == "$primary" ]] || continue
        [[ $h == "$final" ]] && continue
        snapshot_node "$h" "$dir/$h" && old+=(--old "$h=$dir/$h")
    done
    snapshot_node "$final" "$dir/final" || return 1
    r1=$(restarts)
    history check --name "$name" --prefix "$prefix" --history "$dir/history.jsonl" \
        --resolved "$dir/resolved.jsonl" --final "$dir/final" "${old[@]}" \
        --initial "$dir/initial" --samples "$dir/samples.jsonl" \
        --restarts "$((r1 - r0))" --table "$LAB/scenarios.jsonl" ${CHECK_ARGS:-} || rc=1
    head -n 1 "$dir/run.log"
    if ((r1 > r0)); then
        echo "$name: the storage manager restarted $((r1 - r0)) time(s)"
        on app "journalctl -u biblioteca-almacenamiento.service --since '-3min' | grep -iE 'watchdog|panic|error' | tail -n 5"
        rc=1
    fi
    return $rc
}

scenarios_table() { [[ -f $LAB/scenarios.jsonl ]] && history table "$LAB/scenarios.jsonl"; }

# ------------------------------------------------------------ the faults

FAULT_SECONDS=30

# S1: one standby cut from the primary.
s1_fault() {
    local standby
    standby=$(for h in db1 db2 db3; do [[ $h != "$1" && -f $LAB/$h.pid ]] && echo "$h"; done | head -n 1)
    cut_both "$1" "$standby"
    sleep "$FAULT_SECONDS"
}

# S2: the primary cut from both standbys: commits wait, nothing is acknowledged.
s2_fault() {
    local h
    for h in db1 db2 db3; do [[ $h != "$1" ]] && cut_both "$1" "$h"; done
    sleep "$FAULT_SECONDS"
}

# S4: the storage host cut from the primary.
s4_fault() {
    cut_both app "$1"
    sleep "$FAULT_SECONDS"
}

# S5: the storage host cut from the primary, then failover.yml promotes a
# standby while the cut lasts; it must say it could not stop the old primary.
s5_fault() {
    local node
    cut_both app "$1"
    sleep 5
    node=$(for h in db1 db2 db3; do [[ $h != "$1" && -f $LAB/$h.pid ]] && echo "$h"; done | head -n 1)
    mark "promote $node"
    playbook failover.yml "failover-$1" -e "biblioteca_failover_node=$(pg_node_name "$node")" ||
        echo "S5: failover.yml failed"
    grep -q "could not stop\|cannot stop\|not stopped\|unreachable" "$LOGS/failover-$1.log" ||
        echo "S5: failover.yml did not say it could not stop $1"
    sleep 5
}

# S7: the actors' host cut from the load manager.
s7_fault() {
    cut_both act app
    sleep "$FAULT_SECONDS"
}

# S8: 30 % loss on the client's link, both ways.
s8_fault() {
    lossy cli 30
    sleep "$FAULT_SECONDS"
}

# S9: 10 % loss on the replication path (primary <-> both standbys).
s9_fault() {
    local h
    for h in db1 db2 db3; do [[ $h != "$1" ]] && lossy_between "$1" "$h" 10; done
    sleep "$FAULT_SECONDS"
}

# S10: the primary's host frozen, then resumed.
s10_fault() {
    freeze "$1"
    sleep 20
}

# The inventory's node names (biblioteca_pg_node_name) of the lab's hosts.
pg_node_name() {
    case $1 in db1) echo primary ;; db2) echo standby ;; db3) echo standby2 ;; esac
}

# The soak: random faults drawn from S1, S2, S4, S7 and S8, each 10-30 s with
# 10 s of health after it, for SOAK_SECONDS, reproducible from SOAK_SEED.
SOAK_FAULTS=(s1_fault s2_fault s4_fault s7_fault s8_fault)
soak_fault() {
    local end=$((SECONDS + SOAK_SECONDS - 40)) f
    RANDOM=$SOAK_SEED
    while ((SECONDS < end)); do
        f=${SOAK_FAULTS[RANDOM % ${#SOAK_FAULTS[@]}]}
        FAULT_SECONDS=$((10 + RANDOM % 21)) "$f" "$1"
        heal_all
        sleep 10
    done
}
