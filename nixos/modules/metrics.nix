# The metrics endpoints' settings in each service's TOML (through
# lib.nix's metricsSettings, used by ./services.nix), their firewall ports,
# and the opt-in Prometheus scrape job and alert rules.
{ config, options, lib, pkgs, ... }:

let
  inherit (lib) mkIf mkMerge;
  inherit (import ./lib.nix { inherit config lib pkgs; }) cfg actorMetricsPorts;
  m = cfg.metrics;
  ports =
    lib.optional cfg.components.carga.enable m.ports.carga
    ++ lib.optional cfg.components.almacenamiento.enable m.ports.almacenamiento
    ++ map (op: actorMetricsPorts.${op}) cfg.components.actores;
in
{
  # services.prometheus is always declared on NixOS; the guard only spares
  # evaluations against a subset of its options an unknown-option error.
  config = mkIf (cfg.enable && m.enable) (mkMerge ([
    {
      networking.firewall.allowedTCPPorts = mkIf m.openFirewall ports;
    }
  ] ++ lib.optional (options.services ? prometheus) (mkIf m.scrape.enable {
    services.prometheus.scrapeConfigs = [
      {
        job_name = "biblioteca";
        scrape_interval = m.scrape.interval;
        static_configs = [{ targets = map (p: "${m.scrape.host}:${toString p}") ports; }];
      }
    ];
    services.prometheus.ruleFiles = [ ../../docs/monitoring/alerts.yml ];
  })));
}
