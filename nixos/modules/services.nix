# The biblioteca services (load manager, actors, storage manager and its
# migrations) as systemd units mirroring units/*.service, and their TOML
# files rendered from services.biblioteca.settings.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkIf mkMerge;
  inherit (import ./lib.nix { inherit config lib pkgs; })
    cfg pgCfg pg format hardening isPrimary credentialsDir keyDir secretKey curveCredential
    metricsSettings;

  # formats.toml cannot express null: an unset optional key is left out.
  render = name: value:
    format.generate "${name}.toml" (lib.filterAttrsRecursive (_: v: v != null) value);

  configFiles = lib.mapAttrs render (cfg.settings // {
    carga = metricsSettings.carga // (curveSettings.carga or { }) // cfg.settings.carga;
    actor = metricsSettings.actor // (curveSettings.actor or { }) // cfg.settings.actor;
    almacenamiento = metricsSettings.almacenamiento // (curveSettings.almacenamiento or { })
      // cfg.settings.almacenamiento;
    solicitante = (curveSettings.solicitante or { }) // cfg.settings.solicitante;
    failover = failoverSettings;
    migrate = migrateSettings;
  });

  # The port of a `tcp://host:port` endpoint, for the firewall.
  endpointPort = ep: lib.toInt (lib.last (lib.splitString ":" ep));

  # `user=` appended to a key=value conninfo; a URI gets it as a parameter.
  withUser = conninfo: user:
    if builtins.match "postgres(ql)?://.*" conninfo != null
    then "${conninfo}${if lib.hasInfix "?" conninfo then "&" else "?"}user=${user}"
    else "${conninfo} user=${user}";

  pub = cfg.curve.publicKeys;

  # The [curve] sections (src/protocol/curve.rs) unless settings set one.
  curveSettings = lib.optionalAttrs cfg.curve.enable {
    almacenamiento.curve = {
      secret_key_file = secretKey "almacenamiento";
      allow = lib.optional (pub.carga != null) pub.carga ++ pub.actores ++ pub.operadores;
    };
    carga.curve = {
      secret_key_file = secretKey "carga";
      clients_allow = pub.clientes;
      actors_allow = pub.actores;
      storage_key = pub.almacenamiento;
    };
    actor.curve = {
      secret_key_file = secretKey "actor";
      carga_key = pub.carga;
      storage_key = pub.almacenamiento;
    };
    solicitante.curve = {
      secret_key_file = secretKey "cliente";
      carga_key = pub.carga;
    };
    failover.storage.curve = {
      secret_key_file = secretKey "operador";
      storage_key = pub.almacenamiento;
    };
  };

  # The failover tool's nodes get the admin password file unless they name
  # one; the textfile directory comes from metrics.textfileDirectory.
  failoverSettings = lib.optionalAttrs (cfg.metrics.textfileDirectory != null)
    { textfile_dir = cfg.metrics.textfileDirectory; } // cfg.settings.failover // {
    nodes = map
      (n: lib.optionalAttrs (cfg.components.failover.passwordFile != null)
        { password_file = cfg.components.failover.passwordFile; } // n)
      (cfg.settings.failover.nodes or [ ]);
    storage = (curveSettings.failover.storage or { }) // (cfg.settings.failover.storage or { });
  };

  # biblioteca-migrate.service's config: the storage manager's nodes, logged
  # in as the schema owner (a later `user=` wins in a conninfo, a URI gets a
  # `user` parameter), with the
  # owner's password; no [curve], no state_dir, no application password.
  migrateSettings = {
    database = (removeAttrs cfg.settings.almacenamiento.database [ "password_file" ]) // {
      password_file = "${credentialsDir "biblioteca-migrate"}/owner-password";
      nodes = map
        (n: n // { conninfo = withUser n.conninfo pgCfg.ownerUser; })
        (cfg.settings.almacenamiento.database.nodes or [ ]);
    };
  };

  # What the three long-running services share, as in units/. Callers add
  # unit-level settings with mkMerge; `serviceConfig` entries override.
  # `key`: the CURVE key pair's name (curveCredential), when it has one.
  serviceBase = { description, exec, key ? null, serviceConfig ? { } }: {
    inherit description;
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    partOf = [ "biblioteca.target" ];
    environment.RUST_LOG = lib.mkDefault "info";
    serviceConfig = hardening // {
      Type = "notify";
      NotifyAccess = "main";
      ExecStartPre = "${exec} --check-config";
      ExecStart = exec;
      WatchdogSec = "30s";
      TimeoutStartSec = "30s";
      TimeoutStopSec = "30s";
      Restart = "on-failure";
      RestartSec = "5s";
      DynamicUser = true;
      User = "biblioteca";
      Group = "biblioteca";
      ConfigurationDirectory = "biblioteca";
      ConfigurationDirectoryMode = "0755";
      LimitNOFILE = 65536;
    } // lib.optionalAttrs (key != null) (curveCredential key) // serviceConfig;
  };
in
{
  config = mkMerge [
    (mkIf (cfg.enable || pgCfg.enable) {
      assertions = [
        {
          assertion = lib.all (f: f == null || !lib.hasPrefix builtins.storeDir f) [
            cfg.databasePasswordFile
            cfg.ownerPasswordFile
            cfg.components.failover.passwordFile
            cfg.curve.keyDirectory
            pgCfg.replicationPasswordFile
            pgCfg.adminPasswordFile
          ];
          message = "services.biblioteca: password files and curve.keyDirectory must not be in the Nix store (it is world-readable).";
        }
      ];
    })

    (mkIf cfg.enable {
      assertions = [
        {
          assertion = !cfg.curve.enable
            || (pub.almacenamiento != null && pub.carga != null && pub.actores != [ ]);
          message = ''
            services.biblioteca.curve is on (the default): set curve.publicKeys.almacenamiento,
            .carga and .actores (and .clientes, .operadores), or curve.enable = false.
          '';
        }
        {
          assertion = !cfg.components.almacenamiento.enable
            || (cfg.ownerPasswordFile != null && cfg.settings.almacenamiento.database ? nodes);
          message = ''
            services.biblioteca: the storage manager needs ownerPasswordFile (biblioteca-migrate.service
            runs the migrations as the schema owner) and settings.almacenamiento.database.nodes.
          '';
        }
      ];

      environment.systemPackages = [ cfg.package ];

      # The bind mount target of the services' credentials (see the header).
      systemd.tmpfiles.rules = mkIf cfg.curve.enable [ "d ${keyDir} 0700 root root - -" ];

      environment.etc =
        lib.optionalAttrs cfg.components.carga.enable { "biblioteca/carga.toml".source = configFiles.carga; }
        // lib.optionalAttrs (cfg.components.actores != [ ]) { "biblioteca/actor.toml".source = configFiles.actor; }
        // lib.optionalAttrs cfg.components.almacenamiento.enable {
          "biblioteca/almacenamiento.toml".source = configFiles.almacenamiento;
          "biblioteca/migrate.toml".source = configFiles.migrate;
        }
        // { "biblioteca/solicitante.toml".source = configFiles.solicitante; }
        // lib.optionalAttrs cfg.components.failover.enable {
          "biblioteca/failover.toml" = {
            source = configFiles.failover;
            mode = "0600";
          };
        };

      systemd.targets.biblioteca = {
        description = "biblioteca library-loan services";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ]
          ++ map (op: "biblioteca-actor@${op}.service") cfg.components.actores;
        after = [ "network-online.target" ];
      };

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (
        lib.optionals cfg.components.carga.enable
          (map endpointPort [
            (cfg.settings.carga.frontend or "tcp://*:5555")
            (cfg.settings.carga.publisher or "tcp://*:5556")
            (cfg.settings.carga.backchannel or "tcp://*:5557")
          ])
        ++ lib.optional cfg.components.almacenamiento.enable
          (endpointPort (cfg.settings.almacenamiento.bind or "tcp://*:5570"))
      );

      systemd.services = mkMerge [
        (mkIf cfg.components.carga.enable {
          biblioteca-carga = mkMerge [
            (serviceBase {
              description = "biblioteca load manager";
              exec = "${cfg.package}/bin/biblioteca-carga --config /etc/biblioteca/carga.toml";
              key = "carga";
            })
            {
              wantedBy = [ "biblioteca.target" ];
              restartTriggers = [ configFiles.carga ];
            }
          ];
        })

        (mkIf (cfg.components.actores != [ ]) {
          # A template, as units/biblioteca-actor@.service; biblioteca.target
          # wants one instance per operation in components.actores.
          "biblioteca-actor@" = mkMerge [
            (serviceBase {
              description = "biblioteca actor for %i requests";
              exec = "${cfg.package}/bin/biblioteca-actor --config /etc/biblioteca/actor.toml --operacion %i";
              # One key pair per host, shared by every instance.
              key = "actor";
            })
            {
              after = [ "biblioteca-carga.service" "biblioteca-almacenamiento.service" ];
              restartTriggers = [ configFiles.actor ];
            }
          ];
        })

        (mkIf cfg.components.almacenamiento.enable {
          # As units/biblioteca-migrate.service: before every start of the
          # storage manager, with the owner's password that only it gets.
          biblioteca-migrate = {
            description = "biblioteca schema migrations (as the schema owner, before the storage manager)";
            wants = [ "network-online.target" ];
            after = [ "network-online.target" ]
              ++ lib.optionals pg.enable [ "postgresql.service" ]
              ++ lib.optional (pgCfg.enable && isPrimary) "biblioteca-postgresql-passwords.service";
            before = [ "biblioteca-almacenamiento.service" ];
            environment.RUST_LOG = lib.mkDefault "info";
            restartTriggers = [ configFiles.migrate ];
            serviceConfig = hardening // {
              Type = "oneshot";
              ExecStart = "${cfg.package}/bin/biblioteca-almacenamiento --config /etc/biblioteca/migrate.toml migrate --app-role ${pgCfg.user}";
              LoadCredential = [ "owner-password:${toString cfg.ownerPasswordFile}" ];
              # Migrations wait for each other (advisory lock).
              TimeoutStartSec = "10min";
              DynamicUser = true;
              User = "biblioteca-migrate";
              Group = "biblioteca-migrate";
              ConfigurationDirectory = "biblioteca";
              ConfigurationDirectoryMode = "0755";
            };
          };

          # It only checks the schema; biblioteca-migrate runs first.
          biblioteca-almacenamiento = mkMerge [
            (serviceBase {
              description = "biblioteca storage manager";
              exec = "${cfg.package}/bin/biblioteca-almacenamiento --config /etc/biblioteca/almacenamiento.toml";
              serviceConfig = {
                # It re-reads its config on SIGHUP and reports RELOADING=1 and
                # READY=1 itself (Type=notify-reload needs systemd >= 253).
                ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
                TimeoutStartSec = "90s";
                StateDirectory = "biblioteca";
                StateDirectoryMode = "0700";
                LoadCredential = lib.optional (cfg.databasePasswordFile != null)
                  "db-password:${cfg.databasePasswordFile}"
                ++ (curveCredential "almacenamiento").LoadCredential or [ ];
                BindReadOnlyPaths = (curveCredential "almacenamiento").BindReadOnlyPaths or [ ];
              };
            })
            {
              wantedBy = [ "biblioteca.target" ];
              wants = [ "biblioteca-migrate.service" ];
              after = [ "biblioteca-migrate.service" ] ++ lib.optional pg.enable "postgresql.service";
              # A changed config is applied with a reload, not a restart.
              reloadTriggers = [ configFiles.almacenamiento ];
              unitConfig.ReloadPropagatedFrom = "biblioteca.target";
            }
          ];
        })
      ];
    })
  ];
}
