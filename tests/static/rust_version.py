#!/usr/bin/env python3
"""The workspace's rust-version is the real minimum of the locked tree.

Reads `cargo metadata` (the locked dependency graph for Linux) and fails when
the `rust-version` in Cargo.toml is not the highest `rust-version` any locked
dependency declares: lower would be a false promise, higher a needless one.
"""
import json
import subprocess
import sys
import tomllib

with open("Cargo.toml", "rb") as f:
    ours = tomllib.load(f)["workspace"]["package"]["rust-version"]
meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1",
         "--filter-platform", "x86_64-unknown-linux-gnu"],
        check=True, capture_output=True, text=True,
    ).stdout
)
used = {node["id"] for node in meta["resolve"]["nodes"]}


def key(v):
    return tuple(int(x) for x in v.split("."))


needs = sorted(
    (key(p["rust_version"]), p["name"], p["version"])
    for p in meta["packages"]
    if p["id"] in used and p.get("rust_version") and p["source"] is not None
)
if not needs:
    sys.exit("no locked dependency declares a rust-version")
top, name, version = needs[-1]
print(f"Cargo.toml says {ours}; the locked tree needs {'.'.join(map(str, top))} ({name} {version})")
sys.exit(0 if key(ours) == top else 1)
