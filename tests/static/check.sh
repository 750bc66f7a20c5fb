#!/usr/bin/env bash
# Static checks of the deployment artefacts: units/, nixos/ + flake.nix
# (parsed, formatted, linted, and evaluated by tests/static/nix_eval.sh),
# ansible/. Prints one PASS/FAIL line per check, then "N passed, M failed",
# and exits non-zero when any check failed.
#
#   bash tests/static/check.sh            # installs missing tools, then checks
#   STATIC_CHECK_NO_INSTALL=1 bash tests/static/check.sh   # use what is there
#
# Tools it installs when missing (idempotent; run as root):
#   apt:   ansible (ansible-playbook --syntax-check), nix-bin (nix-instantiate),
#          python3-venv, postgresql-15 (validates the PostgreSQL templates),
#          prometheus (promtool: the alert rules and their tests,
#          docs/monitoring/; installed without recommends)
#   pip:   ansible-lint==$ANSIBLE_LINT_VERSION in the venv $ANSIBLE_LINT_VENV
#   cargo: nixpkgs-fmt and deadnix (cargo install --locked; minutes the first
#          time, built in $TOOLS_TARGET_DIR, outside the repository)
# The config check builds the binaries with `cargo build --bins` (debug) to
# feed each rendered TOML to its binary's --check-config.
#
# How the units are verified: `systemd-analyze verify` insists that ExecStart=
# binaries exist, and the units name /usr/local/bin (where ansible installs
# them). The check copies units/ to a temporary directory with /usr/local/bin/
# rewritten to a directory of stub executables; nothing else in the files
# changes, and verify must print nothing at all (it exits 0 on warnings).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2

ANSIBLE_LINT_VERSION=${ANSIBLE_LINT_VERSION:-26.10.1}
ANSIBLE_LINT_VENV=${ANSIBLE_LINT_VENV:-/opt/ansible-lint}
NIXPKGS_FMT_VERSION=1.3.0
DEADNIX_VERSION=1.3.1
TOOLS_TARGET_DIR=${TOOLS_TARGET_DIR:-/opt/cargo-tools-target}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SECURITY_THRESHOLD=2.5

WORK=$(mktemp -d)
chmod 0711 "$WORK" # the throw-away PostgreSQL cluster runs as postgres
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0

log() { printf '%s\n' "$*" >&2; }

# check NAME COMMAND...: runs COMMAND, prints PASS/FAIL, shows output on failure.
check() {
    local name=$1
    shift
    local out="$WORK/out.$PASSED.$FAILED"
    local start=$SECONDS
    if "$@" >"$out" 2>&1; then
        printf 'PASS %s (%ss)\n' "$name" $((SECONDS - start))
        PASSED=$((PASSED + 1))
    else
        printf 'FAIL %s (%ss)\n' "$name" $((SECONDS - start))
        sed 's/^/    /' "$out" | tail -n 60
        FAILED=$((FAILED + 1))
    fi
}

# ---------------------------------------------------------------- tools

install_tools() {
    local missing=() pkg
    for pkg in ansible nix-bin python3-venv postgresql-15 systemd; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing with apt: ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            return 1
    fi
    # Its recommends would pull in the node exporter and start it on :9100.
    if ! dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "ok installed"; then
        log "installing with apt: prometheus (no recommends)"
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null ||
            return 1
    fi
    if ! "$ANSIBLE_LINT_VENV/bin/ansible-lint" --version 2>/dev/null | grep -q "$ANSIBLE_LINT_VERSION"; then
        log "installing ansible-lint $ANSIBLE_LINT_VERSION into $ANSIBLE_LINT_VENV"
        /usr/bin/python3 -m venv "$ANSIBLE_LINT_VENV" &&
            "$ANSIBLE_LINT_VENV/bin/pip" install -q "ansible-lint==$ANSIBLE_LINT_VERSION" || return 1
    fi
    local tool version
    for tool in "nixpkgs-fmt $NIXPKGS_FMT_VERSION" "deadnix $DEADNIX_VERSION"; do
        read -r tool version <<<"$tool"
        if ! cargo install --list 2>/dev/null | grep -q "^$tool v$version:"; then
            log "cargo install $tool $version (slow the first time)"
            CARGO_TARGET_DIR=$TOOLS_TARGET_DIR cargo install --locked --quiet "$tool" --version "$version" ||
                return 1
        fi
    done
}

if [[ -z ${STATIC_CHECK_NO_INSTALL:-} ]]; then
    check "tools installed (apt, pip venv, cargo install)" install_tools
fi
PATH="$HOME/.cargo/bin:$PATH"

# ---------------------------------------------------------------- units

SERVICES=(biblioteca-carga.service biblioteca-almacenamiento.service biblioteca-failover-agent.service
    biblioteca-migrate.service biblioteca-actor@prestamo.service)

# Copies units/ (unit files and their .d/ drop-ins) with /usr/local/bin/
# pointing at stub executables.
stage_units() {
    mkdir -p "$WORK/units" "$WORK/bin"
    local bin f rel
    for bin in $(grep -rho '/usr/local/bin/[A-Za-z0-9_-]*' units | sort -u); do
        printf '#!/bin/sh\nexit 0\n' >"$WORK/bin/${bin##*/}"
        chmod +x "$WORK/bin/${bin##*/}"
    done
    while IFS= read -r f; do
        rel=${f#units/}
        mkdir -p "$WORK/units/$(dirname "$rel")"
        sed "s#/usr/local/bin/#$WORK/bin/#g" "$f" >"$WORK/units/$rel"
    done < <(find units -type f)
    # An instance of the template, as `systemctl start` would load it (the
    # template's drop-ins apply to it through the search path).
    cp "$WORK/units/biblioteca-actor@.service" "$WORK/units/biblioteca-actor@prestamo.service"
    find "$WORK/units" -type f | sed "s#^$WORK/units/##" | sort
}

# verify loads the drop-ins next to each unit (the directory of a unit given
# by path is on the search path), so curve.conf is verified with its unit.
verify_units() {
    local out rc
    out=$(cd "$WORK/units" && systemd-analyze verify --man=no ./biblioteca.target \
        "${SERVICES[@]/#/./}" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    [[ $rc -eq 0 && -z $out ]]
}

# Exposure score of each unit, at most SECURITY_THRESHOLD ("OK").
security_units() {
    local unit score ok=0
    for unit in "${SERVICES[@]}"; do
        score=$(systemd-analyze security --offline=true --no-pager "$WORK/units/$unit" 2>&1 |
            sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
        echo "$unit: ${score:-no score}"
        if [[ -z $score ]] || ! awk -v s="$score" -v t="$SECURITY_THRESHOLD" 'BEGIN { exit !(s <= t) }'; then
            ok=1
        fi
    done
    return $ok
}

hardening_matches_nix() {
    nix-instantiate --eval --strict --json nixos/hardening.nix >"$WORK/hardening.json" &&
        python3 tests/static/units_match_nix.py "$WORK/hardening.json" units/*.service
}

check "units staged with stub binaries" stage_units
check "systemd-analyze verify prints nothing" verify_units
check "systemd-analyze security <= $SECURITY_THRESHOLD for every service" security_units
check "units' hardening = nixos/hardening.nix" hardening_matches_nix

# ---------------------------------------------------------------- nix

NIX_FILES=(flake.nix $(find nixos tests/static -name '*.nix' | sort))

nix_parse() {
    local f ok=0
    for f in "${NIX_FILES[@]}"; do
        nix-instantiate --parse "$f" >/dev/null || ok=1
    done
    return $ok
}

check "nix-instantiate --parse (${#NIX_FILES[@]} files)" nix_parse
check "nixpkgs-fmt --check" nixpkgs-fmt --check "${NIX_FILES[@]}"
check "deadnix --fail" deadnix --fail "${NIX_FILES[@]}"

# The module under nixpkgs' lib, deployment by deployment: its own PASS/FAIL
# lines and "nix_eval: N passed, M failed" (counted by tests/all.sh), or SKIP.
bash tests/static/nix_eval.sh || NIX_EVAL_FAILED=1

# ---------------------------------------------------------------- ansible

export ANSIBLE_CONFIG="$ROOT/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1
check "ansible-playbook --syntax-check site.yml failover.yml" \
    ansible-playbook --syntax-check -i ansible/inventory.example.ini ansible/site.yml ansible/failover.yml
check "ansible-lint --offline (profile production)" \
    bash -c 'cd ansible && "$0/bin/ansible-lint" --offline --nocolor -q' "$ANSIBLE_LINT_VENV"

# Renders every template for the example inventory, CURVE on (the default)
# and off, and feeds each TOML to its binary: serde's deny_unknown_fields
# makes --check-config reject any key that src/protocol/config.rs (or
# src/failover/config.rs) does not know, and a [curve] section must load.
# The role's credentials and public-key directories point at $WORK, filled
# as site.yml would fill them: one key pair per kind, its public key copied
# to KIND/HOST.key for every host, and the password files.
INVENTORY_HOSTS=(db1 db2 app1 app2 client1)
KEY_KINDS=(almacenamiento operador carga actor cliente)

render_configs() {
    local mode out
    for mode in curve plain; do
        out="$WORK/rendered-$mode"
        mkdir -p "$out" &&
            ansible-playbook -i ansible/inventory.example.ini tests/static/render_configs.yml \
                -e "out=$out" -e @tests/static/render_secrets.yml \
                -e "biblioteca_credentials_dir=$WORK/credentials" -e "biblioteca_keys_dir=$WORK/claves" \
                -e "{\"biblioteca_curve\": $([[ $mode == curve ]] && echo true || echo false)}" || return 1
    done
}

make_keys() {
    local kind host
    mkdir -p "$WORK/credentials" && chmod 0700 "$WORK/credentials" || return 1
    for kind in "${KEY_KINDS[@]}"; do
        target/debug/biblioteca-claves generar "$kind" --dir "$WORK/credentials" >/dev/null || return 1
        mkdir -p "$WORK/claves/$kind"
        for host in "${INVENTORY_HOSTS[@]}"; do
            cp "$WORK/credentials/$kind.key" "$WORK/claves/$kind/$host.key"
        done
    done
    for kind in db-password owner-password pg-admin-password; do
        (umask 077 && echo test-only >"$WORK/credentials/$kind")
    done
}

configs_accepted() {
    cargo build --quiet --bins || return 1
    make_keys || return 1
    local f name service bin ok=0 n=0 curve=0
    for f in "$WORK"/rendered-*/*.toml; do
        name=${f#"$WORK"/rendered-}
        service=${f##*/}
        service=${service%.toml}
        service=${service#*.}
        [[ $service == migrate ]] && service=almacenamiento
        bin=target/debug/biblioteca-$service
        if ! out=$("$bin" --config "$f" --check-config 2>&1); then
            echo "$name rejected by ${bin##*/}: $out"
            ok=1
        fi
        grep -q '^\[\(storage\.\)\?curve\]' "$f" && curve=$((curve + 1))
        n=$((n + 1))
    done
    echo "$n configs checked, $curve with CURVE"
    # CURVE on: every rendered file but migrate.toml has a [curve] section.
    local want=$(($(ls "$WORK"/rendered-curve/*.toml | grep -vc '\.migrate\.toml$')))
    if [[ $curve -ne $want ]]; then
        echo "expected $want configs with a [curve] section (CURVE on by default), found $curve"
        ok=1
    fi
    [[ $n -gt 0 ]] && return $ok
}

# The PostgreSQL templates go into a throw-away cluster that must start with
# them: postgresql.conf settings and pg_hba.conf lines are both parsed.
postgres_accepts_templates() {
    local host dir rc=0
    for host in db1 db2; do
        dir="$WORK/pg-$host"
        mkdir -p "$dir" && chown postgres "$dir" || return 1
        runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -A trust >/dev/null || return 1
        cp "$WORK/rendered-curve/$host.biblioteca.conf" "$dir/data/biblioteca.conf"
        cp "$WORK/rendered-curve/$host.pg_hba.conf" "$dir/data/pg_hba.conf"
        echo "include 'biblioteca.conf'" >>"$dir/data/postgresql.conf"
        chown postgres "$dir/data/"*.conf
        # Command-line settings win: no TCP listener, a private socket.
        if runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -w -t 30 -l "$dir/log" \
            -o "-c listen_addresses='' -k $dir" start >/dev/null; then
            runuser -u postgres -- psql -X -h "$dir" -d postgres -tAc \
                "SELECT 'setting: ' || name || ' ' || error FROM pg_file_settings
                 WHERE error IS NOT NULL AND name <> 'listen_addresses' -- overridden on purpose
                 UNION ALL SELECT 'hba line ' || line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL" \
                >"$dir/errors" || rc=1
            runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null
            if [[ -s "$dir/errors" ]]; then
                echo "$host:" && cat "$dir/errors"
                rc=1
            fi
        else
            echo "$host: PostgreSQL did not start with the rendered templates:" && tail -n 5 "$dir/log"
            rc=1
        fi
    done
    return $rc
}

check "Cargo.toml's rust-version is the locked tree's real minimum" python3 tests/static/rust_version.py
check "ansible templates render for the example inventory" render_configs
check "rendered TOML accepted by each binary's --check-config" configs_accepted
check "rendered postgresql.conf/pg_hba.conf accepted by PostgreSQL" postgres_accepts_templates

# ---------------------------------------------------------------- monitoring

dashboard_parses() {
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
assert exprs and all(e.strip() for e in exprs), "panels without expressions"
print(len(exprs), "expressions")' docs/monitoring/dashboard.json
}

check "promtool check rules docs/monitoring/alerts.yml" promtool check rules docs/monitoring/alerts.yml
check "promtool test rules docs/monitoring/alerts.test.yml" \
    bash -c 'cd docs/monitoring && promtool test rules alerts.test.yml'
check "Grafana dashboard JSON parses, every panel has expressions" dashboard_parses

# A Prometheus configuration as the ansible role's docs describe it, over the
# file_sd file rendered for the example inventory: promtool loads both, and
# the file names app1's five endpoints. (render_configs.yml loads the role
# defaults over inventory variables, so app2's single operation is not seen.)
prometheus_file_sd() {
    local out="$WORK/rendered-curve" cfg="$WORK/prometheus.yml"
    cp docs/monitoring/alerts.yml "$WORK/alerts.yml" || return 1
    printf 'rule_files: [%s]\nscrape_configs:\n  - job_name: biblioteca\n    file_sd_configs: [{files: [%s]}]\n' \
        "$WORK/alerts.yml" "$out/file_sd.json" >"$cfg"
    promtool check config "$cfg" || return 1
    python3 -c 'import json, sys
groups = json.load(open(sys.argv[1]))
targets = {t for g in groups for t in g["targets"]}
want = {"192.0.2.21:%d" % p for p in (9555, 9570, 9571, 9572, 9573)}
assert want <= targets, sorted(targets)
print(sorted(targets))' "$out/file_sd.json"
}
check "ansible file_sd targets accepted by promtool check config" prometheus_file_sd

echo "static: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 && -z ${NIX_EVAL_FAILED:-} ]]
