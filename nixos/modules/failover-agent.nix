# The automatic failover agent (opt-in, docs/autofailover.md):
# `biblioteca-failover agent` as biblioteca-failover-agent.service, as
# units/biblioteca-failover-agent.service, with its `[auto]` table (the etcd
# endpoints, this host's node) in /etc/biblioteca/failover.toml. The etcd
# members themselves are NixOS's `services.etcd` on three hosts.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;
  inherit (import ./lib.nix { inherit config lib pkgs; }) cfg pgCfg hardening;
  agent = cfg.failoverAgent;
  # Beside a storage manager (no node) it writes the roles file under the
  # storage manager's state directory and reloads it: root, with the
  # capabilities for that; on a database host, postgres is enough.
  besideStorage = agent.node == null;
in
{
  options.services.biblioteca.failoverAgent = {
    enable = mkEnableOption ''
      the automatic failover agent (manual promotion stays the default).
      Run one on every database host and one beside every storage manager,
      with a three-member etcd'';

    etcdEndpoints = mkOption {
      type = types.listOf (types.strMatching "http://.+:[0-9]+");
      default = [ ];
      example = [ "http://10.0.0.1:2379" "http://10.0.0.2:2379" "http://10.0.0.3:2379" ];
      description = "Client URLs of every etcd member (`[auto] etcd`).";
    };

    node = mkOption {
      type = types.nullOr types.str;
      default = if pgCfg.enable then pgCfg.nodeName else null;
      defaultText = lib.literalExpression "config.services.biblioteca.postgresql.nodeName on a database host, else null";
      description = ''
        This host's database node (`[auto] node`); null beside a storage
        manager, where the agent only re-points it.
      '';
    };

    ttl = mkOption {
      type = types.str;
      default = "5s";
      description = "Lifetime of the leader key without renewal (`[auto] ttl`).";
    };
  };

  config = mkIf agent.enable {
    assertions = [
      {
        assertion = cfg.enable && cfg.components.failover.enable;
        message = "services.biblioteca.failoverAgent needs services.biblioteca.enable and components.failover.enable (it reads /etc/biblioteca/failover.toml).";
      }
      {
        assertion = lib.length agent.etcdEndpoints >= 3;
        message = "services.biblioteca.failoverAgent.etcdEndpoints must list the three etcd members.";
      }
      {
        assertion = (cfg.settings.almacenamiento.replication.replicacion or "estricta") != "disponible";
        message = "services.biblioteca.failoverAgent: automatic failover refuses replicacion = \"disponible\" (writes acknowledged without a standby would be lost silently).";
      }
    ];

    services.biblioteca.settings.failover.auto = {
      enabled = true;
      etcd = agent.etcdEndpoints;
      inherit (agent) ttl;
    } // lib.optionalAttrs (agent.node != null) { inherit (agent) node; };

    systemd.services.biblioteca-failover-agent = {
      description = "biblioteca automatic failover agent (etcd leader key, elections, fencing)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ lib.optional pgCfg.enable "postgresql.service";
      environment.RUST_LOG = lib.mkDefault "info";
      serviceConfig = hardening // {
        Type = "notify";
        NotifyAccess = "main";
        # failover.toml is root-only: handed over as a credential.
        LoadCredential = [ "failover.toml:/etc/biblioteca/failover.toml" ];
        ExecStartPre = "${cfg.package}/bin/biblioteca-failover --config %d/failover.toml --check-config";
        ExecStart = "${cfg.package}/bin/biblioteca-failover --config %d/failover.toml agent";
        WatchdogSec = "30s";
        TimeoutStartSec = "30s";
        TimeoutStopSec = "30s";
        Restart = "always";
        RestartSec = "1s";
        User = if besideStorage then "root" else "postgres";
        Group = if besideStorage then "root" else "postgres";
      } // lib.optionalAttrs besideStorage {
        PrivateUsers = false;
        CapabilityBoundingSet = [ "CAP_DAC_OVERRIDE" "CAP_FOWNER" "CAP_CHOWN" ];
        ReadWritePaths = [ "/var/lib/private/biblioteca" ];
      };
    };
  };
}
