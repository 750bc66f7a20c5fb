#!/usr/bin/env python3
"""The hardening block of every unit in units/ equals nixos/hardening.nix.

Usage: units_match_nix.py HARDENING_JSON UNIT...

HARDENING_JSON is `nix-instantiate --eval --strict --json nixos/hardening.nix`.
Each key of it must appear in each unit's [Service] section with the same
value (booleans as yes/no, lists joined with spaces, a key given several times
in the unit compared as a list), so the NixOS module and the plain units
cannot drift apart.
"""

import json
import sys


def service_section(path):
    """[Service] entries as {key: [values in order]}."""
    entries, section = {}, None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if section == "Service" and "=" in line:
                key, value = line.split("=", 1)
                entries.setdefault(key.strip(), []).append(value.strip())
    return entries


# Keys whose list elements are separate lines in the units (an allow line,
# then a deny line); other lists are one space-separated line.
ONE_LINE_PER_ELEMENT = {"SystemCallFilter"}


def as_unit_values(key, value):
    if isinstance(value, bool):
        return ["yes" if value else "no"]
    if isinstance(value, list):
        if key in ONE_LINE_PER_ELEMENT:
            return [str(v) for v in value]
        return [" ".join(str(v) for v in value)]
    return [str(value)]


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        hardening = json.load(f)
    problems = []
    for unit in sys.argv[2:]:
        entries = service_section(unit)
        for key, value in sorted(hardening.items()):
            want = as_unit_values(key, value)
            got = entries.get(key)
            if got != want:
                problems.append(f"{unit}: {key}: unit has {got}, nixos/hardening.nix has {want}")
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
