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

  # The actors' metrics ports: fixed by operation (src/protocol/metrics_config.rs),
  # since every instance reads the one actor.toml.
  actorMetricsPorts = { prestamo = 9571; devolucion = 9572; renovacion = 9573; };

  # The [metrics] table of each service's TOML (options/metrics.nix); the
  # actors keep their per-operation default port.
  metricsSettings = let m = cfg.metrics; in {
    carga.metrics = { enabled = m.enable; listen_address = m.listenAddress; port = m.ports.carga; };
    almacenamiento.metrics = { enabled = m.enable; listen_address = m.listenAddress; port = m.ports.almacenamiento; };
    actor.metrics = { enabled = m.enable; listen_address = m.listenAddress; };
  };
}
