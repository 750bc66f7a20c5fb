# flake.nix's outputs with nixpkgs' lib and the stand-in pkgs of
# nix_scenarios.nix: the packages' members, the apps' meta, the input's branch.
{ lib, repo }:
let
  flake = import (/. + "${repo}/flake.nix");
  pkgs = import ./nix_scenarios.nix { inherit lib repo; part = "pkgs"; };
  nixpkgs = { inherit lib; legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs); };
  out = flake.outputs { self = out; inherit nixpkgs; };
  sys = "x86_64-linux";
  members = p: lib.filter (f: f != "-p") out.packages.${sys}.${p}.args.cargoBuildFlags;
  check = name: ok: { inherit name ok; };
  branch = builtins.match ".*/nixos-([0-9]+)[.]([0-9]+)" flake.inputs.nixpkgs.url;
in
[
  (check "nixpkgs follows a release branch from 26.05 on"
    (branch != null && lib.toInt (lib.head branch) >= 26))
  (check "the default package installs the services, not the tools"
    (members "default" == [ "biblioteca-storage" "biblioteca-load-manager" "biblioteca-actor" "biblioteca-failover" "biblioteca-runtime" "biblioteca-client" ]))
  (check "the tools package holds the demo and the benchmarks"
    (members "tools" == [ "biblioteca-demo" "biblioteca-bench" ]))
  (check "the demo app runs the tools' biblioteca-demo"
    (lib.hasSuffix "biblioteca-tools/bin/biblioteca-demo" out.apps.${sys}.demo.program))
  (check "every app has meta.description"
    (lib.all (a: (a.meta.description or "") != "") (lib.attrValues out.apps.${sys})))
  (check "the module is exported" (out.nixosModules.default == /. + "${repo}/nixos/module.nix"))
]
