#!/usr/bin/env bash
# Lab: deploys biblioteca with the real ansible/site.yml into four
# systemd-nspawn containers (CURVE on, as by default; the schema migrated by
# biblioteca-migrate.service as biblioteca_owner), runs the reference
# scenario, crashes the primary, fails over with ansible/failover.yml, checks
# nothing was lost, restarts and reloads the storage manager on the promoted
# node.
#
#   db1  10.77.0.11  PostgreSQL primary   (db_primary)
#   db2  10.77.0.12  PostgreSQL standby   (db_standby)
#   db3  10.77.0.13  second standby: quorum commit ANY 1 (db_standby)
#   app  10.77.0.21  storage manager + load manager (almacenamiento, carga)
#   act  10.77.0.22  the three actors + the client (actores, clients)
#
# Each container boots systemd on a copy of this host's /etc with /usr bound
# read-only (so PostgreSQL 15 and systemd come from the host; /usr/local is a
# writable per-container directory for the binaries), lives in its own
# network namespace (lab-NAME) with one veth on a bridge inside a namespace of
# its own (lab-br): no address outside 10.77.0.0/24 is involved, and the host's
# own network is left alone. Ansible reaches the containers with the
# community.docker.nsenter connection (nsenter into the container's PID 1).
#
# Needs root, systemd-nspawn (systemd-container), ansible (Debian's package
# ships community.docker), postgresql-15 on the host and the binaries built:
#   cargo build --workspace && bash tests/lab/run.sh
# LAB_KEEP=1 leaves the containers running for a look (then run with
# LAB_CLEAN=1 to remove them). Takes about 4-5 minutes. Each phase prints its
# duration.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/faults.sh"
source "$(dirname "${BASH_SOURCE[0]}")/scenarios.sh"

if [[ -n ${LAB_CLEAN:-} ]]; then
    teardown
    exit 0
fi
[[ -z ${LAB_KEEP:-} ]] && trap teardown EXIT


# ---------------------------------------------------------------- scenario

client() { on act "biblioteca-solicitante --config /etc/biblioteca/solicitante.toml $*"; }

# Every thread of a service that serves (libzmq's I/O threads and the
# storage workers included; not the main thread, which only waits for
# signals) runs under SCHED_BATCH, which the service sets itself at start
# through the units' seccomp filter. A thread that ends between the listing
# and chrt is skipped; a unit restarting meanwhile is retried (eventually).
batch_scheduled() {
    local host=$1 unit=$2
    on "$host" "pid=\$(systemctl show -p MainPID --value $unit)
        n=0
        for t in /proc/\$pid/task/*; do
            tid=\${t##*/}
            [ \"\$tid\" = \"\$pid\" ] && continue
            policy=\$(chrt -p \$tid 2>/dev/null) || continue # the thread ended meanwhile
            echo \"\$policy\" | grep -q SCHED_BATCH || exit 1
            n=\$((n + 1))
        done
        [ \$n -ge 2 ]"
}

services_batch_scheduled() {
    batch_scheduled app biblioteca-almacenamiento.service &&
        batch_scheduled app biblioteca-carga.service &&
        batch_scheduled act biblioteca-actor@prestamo.service
}

# ---------------------------------------------------------------- quorum

# db3's container dies and boots again while a client borrows and returns
# (until db3 streams again): with ANY 1 (standby, standby2) no write fails.
reboot_standby_under_load() {
    local isbns=(978-0134685991 978-0135957059 978-0596007126 978-1491950357) out=$LAB/reboot-load.out
    local flag=$LAB/reboot-load.run pid load n ok
    : >"$flag"
    (
        i=0
        while [[ -f $flag ]]; do
            client prestamo "${isbns[$((i % 4))]}" "usuario_reinicio_$i" >/dev/null || echo "FAIL prestamo $i"
            client devolucion "${isbns[$((i % 4))]}" "usuario_reinicio_$i" >/dev/null || echo "FAIL devolucion $i"
            i=$((i + 1))
        done
        echo "DONE $i"
    ) >"$out" 2>&1 &
    load=$!
    sleep 1
    pid=$(cat "$LAB/db3.pid")
    kill -9 "$(init_pid db3)"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    boot db3
    eventually 90 replicating_synchronously
    ok=$?
    rm -f "$flag"
    wait "$load"
    grep -v '^DONE' "$out" >&2 || true
    n=$(sed -n 's/^DONE //p' "$out")
    log "$n loans and returns while db3 was down and rebooting"
    [[ $ok -eq 0 ]] && ! grep -q FAIL "$out" && [[ ${n:-0} -ge 3 ]] &&
        [[ $(sql db1 "SELECT count(*) FROM prestamos WHERE usuario LIKE 'usuario_reinicio_%' AND estado = 'DEVUELTO'") == "$n" ]]
}

# After the failover to db2, db3 streams from it and counts for commits.
standby2_follows() {
    [[ $(sql db2 "SELECT state || ':' || sync_state FROM pg_stat_replication WHERE application_name = 'standby2'") =~ ^streaming:(sync|quorum)$ ]]
}

catalogue() { [[ $(sql db1 "SELECT count(*) FROM libros") == 4 ]]; }

ISBN=978-0134685991
U=usuario_test_1

loan_flow() {
    local before
    before=$(sql db1 "SELECT ejemplares FROM libros WHERE isbn = '$ISBN'")
    client consulta "$ISBN" &&
        client prestamo "$ISBN" "$U" &&
        [[ $(sql db1 "SELECT estado FROM prestamos WHERE usuario = '$U'") == ACTIVO ]] &&
        [[ $(sql db1 "SELECT ejemplares FROM libros WHERE isbn = '$ISBN'") == $((before - 1)) ]] &&
        [[ $(sql db2 "SELECT estado FROM prestamos WHERE usuario = '$U'") == ACTIVO ]] &&
        client renovacion "$ISBN" "$U" && client renovacion "$ISBN" "$U" &&
        [[ $(sql db1 "SELECT renovaciones FROM prestamos WHERE usuario = '$U'") == 2 ]] || return 1
    local out rc=0
    out=$(client --json renovacion "$ISBN" "$U") || rc=$?
    [[ $rc -eq 1 && $out == *LimiteRenovaciones* ]] || { echo "third renewal: exit $rc: $out"; return 1; }
    client devolucion "$ISBN" "$U" &&
        [[ $(sql db1 "SELECT estado FROM prestamos WHERE usuario = '$U'") == DEVUELTO ]] &&
        [[ $(sql db1 "SELECT ejemplares FROM libros WHERE isbn = '$ISBN'") == "$before" ]]
}

ten_loans() {
    local isbns=(978-0134685991 978-0135957059 978-0596007126 978-1491950357) i
    for i in $(seq 0 9); do
        client prestamo "${isbns[$((i % 4))]}" "usuario_carga_$i" >/dev/null || return 1
    done
    [[ $(sql db1 "SELECT count(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%'") == 10 ]] &&
        [[ $(sql db2 "SELECT count(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%'") == 10 ]]
}

crash_primary() {
    # Like pulling the plug: SIGKILL to the container's init takes its whole
    # PID namespace down at once, PostgreSQL included.
    kill -9 "$(init_pid db1)"
    local pid
    pid=$(cat "$LAB/db1.pid")
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$LAB/db1.pid"
}

promoted() { [[ $(sql db2 "SELECT pg_is_in_recovery()") == f ]]; }

# ---------------------------------------------------------------- security

# Every service and client config has a [curve] section, the services say so
# in their logs, and a client without a key gets no answer at all.
curve_everywhere() {
    local missing
    missing=$(on app "grep -L '^\[curve\]' /etc/biblioteca/almacenamiento.toml /etc/biblioteca/carga.toml" ;
        on act "grep -L '^\[curve\]' /etc/biblioteca/actor.toml /etc/biblioteca/solicitante.toml")
    [[ -z $missing ]] || { echo "no [curve] in: $missing"; return 1; }
    on app "grep -q '^\[storage.curve\]' /etc/biblioteca/failover.toml" || { echo "failover.toml: no [storage.curve]"; return 1; }
    on app "journalctl -b -u biblioteca-almacenamiento.service | grep -q 'CURVE on'" &&
        on app "journalctl -b -u biblioteca-carga.service | grep -q 'CURVE on'" &&
        on act "journalctl -b -u biblioteca-actor@prestamo.service | grep -q 'CURVE on'" || { echo "a service did not log 'CURVE on'"; return 1; }
    local rc=0
    on act "biblioteca-solicitante --endpoint tcp://$NET.21:5555 --timeout 1500ms --retries 1 consulta $ISBN" >/dev/null 2>&1 || rc=$?
    [[ $rc -ne 0 ]] || { echo "a plaintext client was answered"; return 1; }
}

# Secrets only in root-only files: no password in any TOML, no secret key
# readable by group or others, the storage manager without the owner's password.
secrets_in_files_only() {
    local h found
    for h in app act; do
        found=$(on "$h" "grep -rlE 'lab-(app|owner|admin|replication)-secret' /etc/biblioteca/*.toml; find /etc/biblioteca/credentials -type f -name '*.key_secret' -perm /077")
        [[ -z $found ]] || { echo "$h: exposed: $found"; return 1; }
    done
    on app "test \"\$(stat -c %a /etc/biblioteca/credentials)\" = 700" || { echo "credentials dir not 0700"; return 1; }
    ! on app "ls /run/credentials/biblioteca-almacenamiento.service" | grep -q owner
}

# The schema belongs to biblioteca_owner, app owns nothing, the migration
# unit ran (as the owner) and succeeded.
schema_owned_by_owner() {
    [[ $(sql db1 "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'library'") == biblioteca_owner ]] &&
        [[ $(sql db1 "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> 'biblioteca_owner'") == 0 ]] &&
        [[ $(sql db1 "SELECT count(*) FROM schema_migrations") -ge 3 ]] &&
        [[ $(on app "systemctl show -p Result --value biblioteca-migrate.service") == success ]] &&
        on app "journalctl -b -u biblioteca-migrate.service | grep -qE 'applied migrations|schema up to date'"
}

# A restart of the storage manager runs the migration step again (against the
# promoted node, found by probing), then the storage manager serves from it.
restart_after_failover() {
    local before
    before=$(on app "systemctl show -p InvocationID --value biblioteca-migrate.service")
    on app "systemctl restart biblioteca-almacenamiento.service" &&
        [[ $(on app "systemctl show -p InvocationID --value biblioteca-migrate.service") != "$before" ]] &&
        [[ $(on app "systemctl show -p Result --value biblioteca-migrate.service") == success ]] &&
        eventually 30 client consulta 978-0596007126
}

# systemctl reload reaches the storage manager (ReloadPropagatedFrom=), which
# re-reads its TOML (CURVE key included) and keeps serving.
reload_keeps_serving() {
    local pid
    pid=$(on app "systemctl show -p MainPID --value biblioteca-almacenamiento.service")
    on app "systemctl reload biblioteca.target" &&
        [[ $(on app "systemctl show -p MainPID --value biblioteca-almacenamiento.service") == "$pid" ]] &&
        on app "systemctl is-active biblioteca-almacenamiento.service" >/dev/null &&
        eventually 30 client prestamo 978-1491950357 usuario_post_reload
}

loan_after_failover() {
    eventually 60 client prestamo 978-0596007126 usuario_post_failover &&
        [[ $(sql db2 "SELECT estado FROM prestamos WHERE usuario = 'usuario_post_failover'") == ACTIVO ]] &&
        on app "systemctl is-active biblioteca-almacenamiento.service"
}

# ---------------------------------------------------------------- redeploy
# (Kept in one block: site.yml re-applied with the original inventory after
# the failover, which names db1 primary again.)

# site.yml again with the inventory of the first deployment (db1 is down:
# --limit leaves it out, the templates still name it primary); the storage
# manager follows the failover tool's roles file and writes to db2.
redeploy_keeps_new_primary() {
    # db3 was rebooted under load since the inventory was written: its
    # container's PID 1 changed (everything else in the inventory stands).
    sed -i "s/^\(db3 .*ansible_nsenter_pid=\)[0-9]*/\1$(init_pid db3)/" "$LAB/inventory.ini"
    ANSIBLE_CONFIG=$ROOT/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ansible-playbook \
        -i "$LAB/inventory.ini" -e "@$LAB/secrets.yml" --limit '!db1' \
        "$ROOT/ansible/site.yml" >"$LOGS/site-redeploy.log" 2>&1 || {
        tail -n 20 "$LOGS/site-redeploy.log"
        return 1
    }
    on app "grep -A2 'name = \"primary\"' /etc/biblioteca/almacenamiento.toml | grep -q 'role = \"primary\"'" || {
        echo "the redeployed almacenamiento.toml does not name db1 (node primary) primary"
        return 1
    }
    on app "grep -qx 'standby = \"primary\"' /var/lib/biblioteca/roles.toml" || {
        echo "no roles file naming db2 (node standby) primary"
        return 1
    }
    on app "systemctl restart biblioteca-almacenamiento.service" &&
        eventually 60 client prestamo --id lab-redeploy-1 978-0135957059 usuario_post_redeploy &&
        [[ $(sql db2 "SELECT estado FROM prestamos WHERE usuario = 'usuario_post_redeploy'") == ACTIVO ]] &&
        on app "biblioteca-failover --config /etc/biblioteca/failover.toml status" |
        grep -q 'storage manager roles from: /var/lib/biblioteca/roles.toml'
}

redeploy_phase() {
    phase "site.yml again with the original inventory"
    check "after site.yml with the old roles, writes still go to the new primary" redeploy_keeps_new_primary
}

# ---------------------------------------------------------------- run

lab_up
check "second site.yml run reports changed=0" second_run_changes_nothing
check "every service active" eventually 60 units_active
check "every service thread runs under SCHED_BATCH" eventually 30 services_batch_scheduled
check "primary replicates to both standbys under quorum commit" eventually 60 replicating_synchronously
check "the guide's catalogue is seeded" eventually 30 catalogue
check "schema owned by biblioteca_owner, migrated by biblioteca-migrate.service" schema_owned_by_owner
check "CURVE on every endpoint, plaintext client refused" curve_everywhere
check "secrets only in root-only files and credentials" secrets_in_files_only

phase "scenario"
check "consulta, prestamo, replication, 2 renewals, refused 3rd, devolucion" loan_flow
check "ten loans, replicated" ten_loans
check "db3 (a standby) dies and reboots under load: no write fails" reboot_standby_under_load

# The core of the network-fault scenarios (partitions.sh runs them all),
# with three database hosts; S5 runs after the failover below.
faults_init
scenarios_setup
phase "network faults: S2"
CHECK_ARGS=--no-acks-during-fault check "S2: primary cut from both standbys 30 s: nothing acknowledged while cut, every write resolved, no restart" scenario S2 5 s2_fault 15
phase "network faults: S4"
check "S4: storage host cut from the primary 30 s: nothing lost or doubled, no restart" scenario S4 5 s4_fault 10
phase "network faults: S8"
check "S8: 30 % loss on the client's link 30 s: retries under one id, nothing lost or doubled" scenario S8 5 s8_fault 10
LIBROS=$(sql db1 "SELECT count(*) FROM libros")
PRESTAMOS=$(sql db1 "SELECT count(*) FROM prestamos")

phase "crashing db1 and failing over"
crash_primary
check "failover.yml promotes the standby" playbook failover.yml failover -e biblioteca_failover_node=standby
check "standby2 follows the promoted node" eventually 60 standby2_follows
check "standby left recovery" eventually 30 promoted
check "nothing lost ($LIBROS libros, $PRESTAMOS prestamos)" \
    test "$(sql db2 "SELECT count(*) FROM libros")/$(sql db2 "SELECT count(*) FROM prestamos")" = "$LIBROS/$PRESTAMOS"
check "a new loan after the failover" loan_after_failover

phase "restart and reload on the promoted node"
check "storage manager restart re-runs the migration step on the promoted node" restart_after_failover
check "systemctl reload biblioteca.target keeps serving" reload_keeps_serving
redeploy_phase
phase "network faults: S5"
check "S5: storage host cut from the primary (db2), failover.yml promotes db3, heal: fenced, nothing lost" scenario S5 5 s5_fault 15
phase ""
scenarios_table

echo "lab: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
