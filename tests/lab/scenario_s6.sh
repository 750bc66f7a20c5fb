#!/usr/bin/env bash
# Scenario S6 of issue 22, sourced by partitions.sh only (after lib.sh,
# faults.sh and scenarios.sh): the partition {app, db1} | {db2, db3}, then a
# promote run from the database side (biblioteca-failover on a standby's
# host, which reaches neither the storage manager nor the old primary).
#
# Checked here: run without --allow-data-loss, promote refuses and says it
# cannot read the storage manager's degraded-mode record (from that side
# nothing rules out writes acknowledged in `disponible` mode); with the flag
# it promotes and says the old primary was unreachable. The checker then
# verifies that the cut-off primary acknowledged nothing (it has no
# standby) and, after the heal, that no acknowledged write is missing from
# the new primary: the storage manager followed the newer timeline and
# fenced the old primary.

# The tool's config on the database side: the nodes of the storage host's
# failover.toml, no storage config (there is none on this side), and a short
# wait for a storage manager it cannot reach.
S6_CONFIG=/etc/biblioteca/failover-s6.toml

s6_install_tool() {
    local host=$1 src=$LAB/app/etc/biblioteca
    mkdir -p "$LAB/$host.usr-local/bin" "$LAB/$host/etc/biblioteca"
    cp "$LAB/build/biblioteca-failover" "$LAB/$host.usr-local/bin/" 2>/dev/null ||
        cp "$BUILD_DIR/biblioteca-failover" "$LAB/$host.usr-local/bin/"
    local pw
    for pw in $(sed -n 's/^password_file = "\(.*\)"$/\1/p' "$src/failover.toml" | sort -u); do
        mkdir -p "$LAB/$host$(dirname "$pw")"
        install -m 0600 "$LAB/app$pw" "$LAB/$host$pw"
    done
    {
        sed '/^\[storage\]/,$d' "$src/failover.toml" | grep -v '^textfile_dir'
        printf '\n[storage]\nreload = "none"\nstatus_timeout = "500ms"\nswitch_wait = "2s"\n'
    } >"$LAB/$host$S6_CONFIG"
}

# S6: the partition, a refused then a forced promote on the database side,
# FAULT_SECONDS more of partition, then the heal (by scenario).
# s6_allow_side HOST: the lab's pg_hba lets the superuser in from the storage
# host only; the tool on the database side needs it from there too.
s6_allow_side() {
    on "$1" "f=\$(runuser -u postgres -- psql -X -tAc 'SHOW hba_file') &&
        { grep -q '^# s6' \"\$f\" || printf '# s6\nhost all postgres $NET.0/24 scram-sha-256\n' >>\"\$f\"; } &&
        runuser -u postgres -- psql -X -tAc 'SELECT pg_reload_conf()' >/dev/null"
}

s6_fault() {
    local old=$1 node h out log=$LOGS/s6-promote side=() stale=()
    # The database side: the standbys. A fenced former primary left by an
    # earlier promote (S6 then S6D on one lab) is cut from everyone.
    for h in db1 db2 db3; do
        [[ $h == "$old" || ! -f $LAB/$h.pid ]] && continue
        if [[ $(qsql "$h" 'SELECT pg_is_in_recovery()') == t ]]; then side+=("$h"); else stale+=("$h"); fi
    done
    node=${side[0]:?no standby to promote}
    for h in "${side[@]}"; do s6_allow_side "$h" || FAULT_FAILED="cannot open pg_hba on $h"; done
    for h in "${side[@]}"; do
        cut_both app "$h"
        cut_both "$old" "$h"
    done
    for h in "${stale[@]}"; do
        for x in app "$old" "${side[@]}"; do cut_both "$h" "$x"; done
    done
    sleep 5
    s6_install_tool "$node"
    # No --node: the tool picks the reachable standby with the most WAL.
    local promote="biblioteca-failover --config $S6_CONFIG promote"
    mark "promote $node (refused)"
    if out=$(on "$node" "$promote" 2>&1); then
        FAULT_FAILED="promote on $node without --allow-data-loss did not refuse"
    elif ! grep -q "cannot read the storage manager's degraded-mode record" <<<"$out"; then
        FAULT_FAILED="promote on $node refused without naming the unreadable degraded-mode record"
    fi
    printf '%s\n' "$out" >"$log-refused.log"
    echo "S6 promote without --allow-data-loss: $(grep -m1 -o 'refusing to promote.*' "$log-refused.log" || tail -n 1 "$log-refused.log")"
    mark "promote $node --allow-data-loss"
    out=$(on "$node" "$promote --allow-data-loss" 2>&1) || true
    printf '%s\n' "$out" >"$log-forced.log"
    for h in "${side[@]}"; do [[ $(qsql "$h" 'SELECT pg_is_in_recovery()') == f ]] && node=$h; done
    if [[ $(qsql "$node" 'SELECT pg_is_in_recovery()') != f ]]; then
        FAULT_FAILED="${FAULT_FAILED:+$FAULT_FAILED; }promote --allow-data-loss did not promote $node: $(tail -n 3 "$log-forced.log")"
    elif ! grep -q "old primary unreachable" "$log-forced.log"; then
        FAULT_FAILED="${FAULT_FAILED:+$FAULT_FAILED; }promote on $node did not say it could not reach (stop) the old primary $old"
    fi
    sleep "$FAULT_SECONDS"
}

# S6D: S6 with the storage manager in `replicacion = "disponible"`
# (degradar_tras as configured, 5 s by default): cut from both standbys, it
# degrades and the old primary acknowledges writes alone. The database side
# cannot see that: promote must refuse without --allow-data-loss; with it,
# the checker reports what was lost. Restores `estricta` afterwards.
s6d_set_mode() {
    local conf=$LAB/app/etc/biblioteca/almacenamiento.toml
    sed -i "s/^replicacion = .*/replicacion = \"$1\"/" "$conf"
    on app "systemctl restart biblioteca-almacenamiento.service" &&
        eventually 30 units_active
}
