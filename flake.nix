{
  description = "biblioteca: library loans over ZeroMQ, with a storage manager over replicated PostgreSQL";

  # A supported release branch; flake.lock pins its commit (README.md, "Nix").
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: _prev: {
        biblioteca = final.callPackage ./nixos/package.nix { };
      };

      # `biblioteca`: the services (what the NixOS module installs);
      # `tools`: the demo and the benchmarks, whose demo starts the services'
      # binaries from `biblioteca`.
      packages = forAllSystems (pkgs: rec {
        biblioteca = pkgs.callPackage ./nixos/package.nix { };
        tools = pkgs.callPackage ./nixos/package.nix {
          pname = "biblioteca-tools";
          members = [ "biblioteca-demo" "biblioteca-bench" ];
          mainProgram = "biblioteca-demo";
          servicesBin = "${biblioteca}/bin";
        };
        default = biblioteca;
      });

      # `nix run .#demo`: the whole system on one machine (a PostgreSQL
      # primary/standby pair and every service); the package wraps
      # biblioteca-demo with PostgreSQL on its PATH.
      apps = forAllSystems (pkgs:
        let
          demo = {
            type = "app";
            program = lib.getExe' self.packages.${pkgs.stdenv.hostPlatform.system}.tools "biblioteca-demo";
            meta.description = "The whole system on one machine, narrating the reference scenario";
          };
        in
        {
          inherit demo;
          default = demo;
        });

      # The module builds the package from this tree unless
      # services.biblioteca.package says otherwise.
      nixosModules.default = ./nixos/module.nix;
      nixosModules.biblioteca = ./nixos/module.nix;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        failover = pkgs.testers.runNixOSTest (import ./nixos/tests/failover.nix {
          module = self.nixosModules.default;
        });
        failover-quorum = pkgs.testers.runNixOSTest (import ./nixos/tests/failover-quorum.nix {
          module = self.nixosModules.default;
        });
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.postgresql
            pkgs.nixpkgs-fmt
            pkgs.deadnix
            pkgs.ansible
            pkgs.ansible-lint
            (pkgs.python3.withPackages (ps: [ ps.pyzmq ]))
          ];
          PG_BIN = "${lib.getBin pkgs.postgresql}/bin";
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
