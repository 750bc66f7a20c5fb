#!/usr/bin/env bash
# Every network-fault scenario of issue 22 in one command, on a fresh lab
# (the same containers as run.sh: db1 primary, db2 and db3 standbys under
# ANY 1 quorum commit, app with the storage and load managers, act with the
# actors) plus a client host (namespace lab-cli) for the workload and the
# checker. Prints the table of scenarios/partitions (docs/failover.md keeps
# the latest). Run under the lab's lock:
#   cargo build --release --workspace --features fault-injection
#   flock /tmp/biblioteca-lab.lock env BUILD_DIR=$PWD/target/release bash tests/lab/partitions.sh
# PARTITIONS="S2 S8" runs a subset, PARTITIONS=soak the 10-minute soak of
# random faults (SOAK_SECONDS to change it; not in CI); SEED=n replays the
# workloads and the soak's draws; LAB_KEEP=1
# keeps the containers; LAB_REUSE=1 runs against a lab that is already up.
# Takes about 4 minutes of setup plus about a minute per scenario.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/faults.sh"
source "$(dirname "${BASH_SOURCE[0]}")/scenarios.sh"
source "$(dirname "${BASH_SOURCE[0]}")/scenario_s6.sh"

if [[ -z ${LAB_REUSE:-} ]]; then
    lab_up
    check "every service active" eventually 60 units_active
    check "primary replicates to both standbys under quorum commit" eventually 60 replicating_synchronously
fi
faults_init
scenarios_setup
rm -f "$LAB/scenarios.jsonl"

# S5 promotes a standby and S3 crashes the primary: either runs last (S3
# only when asked for). S6 and S6D promote from the database side and run
# only when asked for (PARTITIONS="S6 S6D", on a lab of their own).
for s in ${PARTITIONS:-S1 S2 S4 S7 S8 S9 S10 S5}; do
    phase "scenario $s"
    case $s in
        S1) check "S1: one standby cut from the primary 30 s: no write fails" scenario S1 5 s1_fault 20 ;;
        S2) CHECK_ARGS=--no-acks-during-fault check "S2: primary cut from both standbys 30 s: nothing acknowledged while cut, every write resolved" scenario S2 5 s2_fault 25 ;;
        S4) FAULT_SECONDS=20 check "S4: storage host cut from the primary 20 s" scenario S4 5 s4_fault 20 ;;
        S5) check "S5: storage host cut from the primary, failover.yml promotes a standby" scenario S5 5 s5_fault 25 ;;
        S6) FAULT_SECONDS=10 CHECK_ARGS=--no-acks-during-fault check "S6: {app, db1} | {db2, db3}, promote on the database side: refused without --allow-data-loss, then forced; nothing acknowledged while cut" scenario S6 5 s6_fault 25 ;;
        S6D)
            check "S6D: the storage manager switched to replicacion = disponible" s6d_set_mode disponible
            FAULT_SECONDS=10 check "S6D: S6 with replicacion = disponible: promote refused without --allow-data-loss (the checker reports what forcing it lost)" scenario S6D 5 s6_fault 25
            check "S6D: the storage manager back to replicacion = estricta" s6d_set_mode estricta
            ;;
        S7) check "S7: actors' host cut from the load manager 30 s" scenario S7 5 s7_fault 20 ;;
        S8) FAULT_SECONDS=60 check "S8: 30 % loss on the client's link 60 s" scenario S8 5 s8_fault 20 ;;
        S9) FAULT_SECONDS=60 check "S9: 10 % loss on the replication path 60 s" scenario S9 5 s9_fault 20 ;;
        S3) FAULT_SECONDS=6 check "S3: standbys' packets to the primary dropped 6 s (less than wal_sender_timeout), then the primary crashes and is failed over" scenario S3 5 s3_fault 20 ;;
        S10) FAULT_SECONDS=20 check "S10: the primary's host frozen 20 s" scenario S10 5 s10_fault 20 ;;
        soak)
            SOAK_SECONDS=${SOAK_SECONDS:-600}
            SOAK_SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
            echo "soak: seed $SOAK_SEED (SEED=$SOAK_SEED replays it), $SOAK_SECONDS s"
            FAULT_SECONDS=$SOAK_SECONDS check "soak: random faults from S1 S2 S4 S7 S8 for $SOAK_SECONDS s, seed $SOAK_SEED" scenario soak 5 soak_fault 5
            ;;
        *) echo "unknown scenario $s" && FAILED=$((FAILED + 1)) ;;
    esac
done
phase ""
scenarios_table
echo "partitions: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
