# Options of the services' Prometheus metrics and health endpoints, in the
# style of services.prometheus.exporters.* (enable, listenAddress, port,
# openFirewall), and the opt-in that adds this host's targets and the alert
# rules to services.prometheus on the same host (../metrics.nix).
{ lib, ... }:

let
  inherit (lib) mkOption types;
  port = default: what: mkOption {
    type = types.port;
    inherit default;
    description = "Port of ${what}'s metrics endpoint (`[metrics] port`).";
  };
in
{
  options.services.biblioteca.metrics = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Serve `/metrics` (Prometheus text format), `/liveness`, `/readiness`
        and, on the storage manager, `/primary` from every service
        (`[metrics] enabled`). Bound before the service reports ready.
      '';
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = "Address the endpoints listen on (an IP address).";
    };

    ports = {
      carga = port 9555 "the load manager";
      almacenamiento = port 9570 "the storage manager";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the enabled services' metrics ports (the actors' are fixed:
        9571 prestamo, 9572 devolucion, 9573 renovacion, since their
        instances share one configuration file).
      '';
    };

    scrape = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Add this host's enabled services as targets of the Prometheus on this
          host (`services.prometheus.scrapeConfigs`, job `biblioteca`) and the
          alert rules of docs/monitoring/alerts.yml to its `ruleFiles`.
        '';
      };
      host = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "The address Prometheus scrapes this host's services at.";
      };
      interval = mkOption {
        type = types.str;
        default = "15s";
        description = "The job's `scrape_interval`.";
      };
    };

    textfileDirectory = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/prometheus-node-exporter-text-files";
      description = ''
        node_exporter's textfile directory: `biblioteca-failover` records each
        action's last run, last success and duration there
        (`textfile_dir` of {option}`services.biblioteca.settings.failover`).
      '';
    };
  };
}
