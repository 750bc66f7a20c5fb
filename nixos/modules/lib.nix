# Helpers shared by the services.biblioteca modules (nixos/modules/*.nix):
# each module imports this file with its own config, lib and pkgs, so every
# module derives the same names from the same options.
{ config, lib, pkgs }:

rec {
  cfg = config.services.biblioteca;
  pgCfg = cfg.postgresql;
  pg = config.services.postgresql;

  format = pkgs.formats.toml { };
  hardening = import ../hardening.nix;

  operations = [ "prestamo" "devolucion" "renovacion" ];

  isPrimary = pgCfg.role == "primary";

  credentialsDir = unit: "/run/credentials/${unit}.service";

  keyDir = cfg.curve.keyDirectory;
  secretKey = name: "${keyDir}/${name}.key_secret";
  # The CURVE credential of a service, and its directory shown at keyDir.
  curveCredential = name: lib.optionalAttrs cfg.curve.enable {
    LoadCredential = [ "${name}.key_secret:${secretKey name}" ];
    BindReadOnlyPaths = [ "-%d:${keyDir}" ];
  };
}
