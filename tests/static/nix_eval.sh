#!/usr/bin/env bash
# Evaluates nixos/module.nix with nixpkgs' own lib in the deployments of
# tests/static/nix_scenarios.nix and prints one PASS/FAIL line per check,
# then "nix_eval: N passed, M failed". nixpkgs' lib comes from
# $NIXPKGS_LIB, else ../shared/vendor/nixpkgs-lib beside the checkout; with
# neither (or no nix-instantiate) it prints SKIP and the reason, and exits 0.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 2

LIB=${NIXPKGS_LIB:-$ROOT/../shared/vendor/nixpkgs-lib}
if ! command -v nix-instantiate >/dev/null; then
    echo "SKIP nix module evaluation: no nix-instantiate (apt-get install nix-bin)"
    exit 0
fi
if [[ ! -e $LIB/lib/default.nix ]]; then
    echo "SKIP nix module evaluation: no nixpkgs lib at $LIB (set NIXPKGS_LIB to a nixpkgs checkout)"
    exit 0
fi

PASSED=0
FAILED=0
result() { # result OK NAME [DETAIL]
    if [[ $1 == true ]]; then
        echo "PASS $2"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL $2${3:+: $3}"
        FAILED=$((FAILED + 1))
    fi
}
nix_eval() {
    nix-instantiate --eval --strict --json --readonly-mode tests/static/nix_scenarios.nix \
        --arg lib "import $LIB/lib" --argstr repo "$ROOT" "$@"
}

scenarios=$(nix_eval 2>&1) || { result false "list scenarios" "$scenarios"; scenarios='[]'; }
for s in $(python3 -c 'import json,sys; print(" ".join(json.loads(sys.argv[1])))' "$scenarios"); do
    if out=$(nix_eval --argstr scenario "$s" 2>&1); then
        while IFS=$'\t' read -r ok name; do
            result "$ok" "nix $s: $name"
        done < <(python3 -c 'import json,sys
for c in json.loads(sys.argv[1]): print(str(c["ok"]).lower() + "\t" + c["name"])' "$out")
    else
        result false "nix $s: evaluates" "$(grep -m1 -E '^error' <<<"$out" || tail -n1 <<<"$out")"
    fi
done

# The flake's outputs with this lib and the same stand-in pkgs.
flake_checks=$(nix-instantiate --eval --strict --json --readonly-mode tests/static/nix_flake.nix \
    --arg lib "import $LIB/lib" --argstr repo "$ROOT" 2>&1)
if [[ $? -eq 0 ]]; then
    while IFS=$'\t' read -r ok name; do
        result "$ok" "flake: $name"
    done < <(python3 -c 'import json,sys
for c in json.loads(sys.argv[1]): print(str(c["ok"]).lower() + "\t" + c["name"])' "$flake_checks")
else
    result false "flake: evaluates" "$(grep -m1 -E '^error' <<<"$flake_checks")"
fi

echo "nix_eval: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
