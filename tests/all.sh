#!/usr/bin/env bash
# Every test of the project, in one command (the README's test command after
# .ci/setup-debian, and what CI runs):
#   1. cargo build of every binary, then cargo test: unit tests and the
#      suites against real PostgreSQL clusters, real ZeroMQ sockets and the
#      real binaries (e2e, guide_python, chaos, failover, security,
#      load_manager, cluster, hostile, scheduling, ...);
#   2. tests/static/check.sh: systemd-analyze verify/security, Nix parse/format/
#      lint, ansible syntax-check/lint, rendered configs checked by the binaries;
#   3. tests/lab/run.sh: the ansible roll-out onto systemd-nspawn lab hosts,
#      the guide's scenario and a failover across them.
# Steps 2 and 3 need root (they install tools, create network namespaces and
# containers). Every step runs even when an earlier one failed; the last line
# adds up the counts, and the exit status is non-zero if anything failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
step() {
  local name=$1
  shift
  local started=$SECONDS
  echo "== $name"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [ "$rc" -eq 0 ] || status=1
}

# The suites start the real service binaries from target/release, and
# `cargo test` builds only the test targets of the root package, so every
# workspace binary is built first, with the same features as the tests.
# fault-injection: the hostile suite makes service threads panic through
# BIBLIOTECA_FAULT_FILE (inert without it; `cargo build --release` ships none).
step "cargo build" cargo build --release --locked --workspace --features fault-injection
step "cargo test" cargo test --release --locked --no-fail-fast --features fault-injection
step "static checks" bash tests/static/check.sh
step "lab" env BUILD_DIR="$PWD/target/release" bash tests/lab/run.sh

# libtest's "test result: ... N passed; M failed" lines and the other suites'
# "[name:] N passed, M failed" lines.
read -r passed failed < <(awk '
  /^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^([a-z_-]+: )?[0-9]+ passed, [0-9]+ failed$/ { n = ($1 ~ /:$/) ? 2 : 1; p += $n; f += $(n+2) }
  END { print p + 0, f + 0 }' "$log")
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
echo "total: $passed passed, $failed failed"
exit "$status"
