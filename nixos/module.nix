# services.biblioteca: the biblioteca services (load manager, actors, storage
# manager) and, on database hosts, a PostgreSQL primary or standby wired for
# synchronous streaming replication.
#
# The systemd services mirror units/*.service (same Type, watchdog, restart
# policy and, through ./hardening.nix, the same sandbox); the TOML files are
# rendered with pkgs.formats.toml from `settings`, whose keys are those of
# src/protocol/config.rs (CargaConfig, ActorConfig, StorageConfig) and
# src/failover/config.rs (FailoverConfig). Secrets never enter the Nix store:
# `*PasswordFile` options name files on the host, handed to the services with
# LoadCredential=; biblioteca-failover (run by root) reads its password file
# itself.
#
# Schema: biblioteca-migrate.service runs `biblioteca-almacenamiento migrate`
# as the schema owner before every start of the storage manager (which only
# checks the schema); only it gets the owner's password.
#
# CURVE (on by default): each service's secret key is
# `curve.keyDirectory/NAME.key_secret` on the host (root-only, made with
# `biblioteca-claves generar NAME --dir DIR`), handed over with LoadCredential=
# and shown to the service at that same path (BindReadOnlyPaths=%d:DIR), so the
# TOML path holds inside the unit and for root outside it; public keys are
# options (Z85 strings or files outside keyDirectory).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkMerge mkOption types;

  cfg = config.services.biblioteca;
  pgCfg = cfg.postgresql;
  pg = config.services.postgresql;

  format = pkgs.formats.toml { };
  hardening = import ./hardening.nix;

  operations = [ "prestamo" "devolucion" "renovacion" ];

  # formats.toml cannot express null: an unset optional key is left out.
  render = name: value:
    format.generate "${name}.toml" (lib.filterAttrsRecursive (_: v: v != null) value);

  configFiles = lib.mapAttrs render (cfg.settings // {
    carga = (curveSettings.carga or { }) // cfg.settings.carga;
    actor = (curveSettings.actor or { }) // cfg.settings.actor;
    almacenamiento = (curveSettings.almacenamiento or { }) // cfg.settings.almacenamiento;
    solicitante = (curveSettings.solicitante or { }) // cfg.settings.solicitante;
    failover = failoverSettings;
    migrate = migrateSettings;
  });

  # The port of a `tcp://host:port` endpoint, for the firewall.
  endpointPort = ep: lib.toInt (lib.last (lib.splitString ":" ep));

  # A bare address becomes a single-host CIDR for pg_hba.conf.
  cidr = addr:
    if lib.hasInfix "/" addr then addr
    else if lib.hasInfix ":" addr then "${addr}/128"
    else "${addr}/32";

  settingsOption = name: extraOptions: mkOption {
    type = types.submodule {
      freeformType = format.type;
      options = extraOptions;
    };
    default = { };
    description = ''
      Contents of {file}`/etc/biblioteca/${name}.toml`. Keys are those of the
      service's config struct; unknown keys are rejected when the service
      starts (`--check-config` runs first), and unset keys keep the built-in
      defaults.
    '';
  };

  credentialsDir = unit: "/run/credentials/${unit}.service";

  curve = cfg.curve;
  keyDir = curve.keyDirectory;
  secretKey = name: "${keyDir}/${name}.key_secret";
  # The CURVE credential of a service, and its directory shown at keyDir.
  curveCredential = name: lib.optionalAttrs curve.enable {
    LoadCredential = [ "${name}.key_secret:${secretKey name}" ];
    BindReadOnlyPaths = [ "-%d:${keyDir}" ];
  };
  pub = curve.publicKeys;

  # The [curve] sections (src/protocol/curve.rs) unless settings set one.
  curveSettings = lib.optionalAttrs curve.enable {
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

  # The failover tool's nodes get the admin password file unless they name one.
  failoverSettings = cfg.settings.failover // {
    nodes = map
      (n: lib.optionalAttrs (cfg.components.failover.passwordFile != null)
        { password_file = cfg.components.failover.passwordFile; } // n)
      (cfg.settings.failover.nodes or [ ]);
    storage = (curveSettings.failover.storage or { }) // (cfg.settings.failover.storage or { });
  };

  # biblioteca-migrate.service's config: the storage manager's nodes, logged
  # in as the schema owner (a later `user=` wins in a conninfo), with the
  # owner's password; no [curve], no state_dir, no application password.
  migrateSettings = {
    database = (removeAttrs cfg.settings.almacenamiento.database [ "password_file" ]) // {
      password_file = "${credentialsDir "biblioteca-migrate"}/owner-password";
      nodes = map
        (n: n // { conninfo = "${n.conninfo} user=${pgCfg.ownerUser}"; })
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

  # psql reads the password file itself (a backquoted `cat`), so the
  # password is on no command line and in no environment.
  setPasswordSql = pkgs.writeText "biblioteca-set-password.sql" ''
    \set pw `cat :'file'`
    ALTER ROLE :"role" WITH LOGIN PASSWORD :'pw';
    \unset pw
  '';

  isPrimary = pgCfg.role == "primary";

  # Only the peer may replicate, only storage manager hosts may log in as the
  # application role and the schema owner (migrations), only failover hosts
  # as the superuser (also for replication: rejoin); all with SCRAM.
  hbaLines =
    [ "host replication ${pgCfg.replicationUser} ${cidr pgCfg.peerAddress} scram-sha-256" ]
    ++ map (a: "host ${pgCfg.database} ${pgCfg.user} ${cidr a} scram-sha-256") pgCfg.clientAddresses
    ++ map (a: "host ${pgCfg.database} ${pgCfg.ownerUser} ${cidr a} scram-sha-256") pgCfg.clientAddresses
    ++ map (a: "host all postgres ${cidr a} scram-sha-256") pgCfg.adminAddresses
    ++ map (a: "host replication postgres ${cidr a} scram-sha-256") pgCfg.adminAddresses;
  pgPort = toString pgCfg.port;

  # Setup sessions on a primary commit locally: with synchronous_standby_names
  # set, a commit otherwise waits for a standby that cannot connect before
  # these very sessions have set the replication password.
  PGOPTIONS = "-c synchronous_commit=local";
in
{
  options.services.biblioteca = {
    enable = mkEnableOption "the biblioteca library-loan services";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The biblioteca package (all its binaries).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the TCP ports of the enabled components: the load manager's
        frontend, publisher and back-channel, the storage manager's ROUTER and,
        with {option}`services.biblioteca.postgresql.enable`, PostgreSQL.
        pg_hba.conf still admits only the configured peers.
      '';
    };

    components = {
      carga.enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run the load manager (`biblioteca-carga.service`).";
      };
      almacenamiento.enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run the storage manager (`biblioteca-almacenamiento.service`).";
      };
      actores = mkOption {
        type = types.listOf (types.enum operations);
        default = operations;
        description = ''
          Operations to run an actor for on this host, one
          `biblioteca-actor@OPERATION.service` each.
        '';
      };
      failover.passwordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/biblioteca-pg-admin-password";
        description = ''
          File with the password of the failover tool's database role (the
          `postgres` superuser, see
          {option}`services.biblioteca.postgresql.adminPasswordFile`); set as
          `password_file` of every node in
          {option}`services.biblioteca.settings.failover` that names none.
        '';
      };
      failover.enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Install {file}`/etc/biblioteca/failover.toml` (from
          {option}`services.biblioteca.settings.failover`) so that
          `biblioteca-failover status|promote|rejoin|switchover --config
          /etc/biblioteca/failover.toml` can be run on this host.
        '';
      };
    };

    databasePasswordFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/biblioteca-db-password";
      description = ''
        File holding the password of the application role. On the storage
        manager host it is handed over as the credential `db-password` and the
        config points at {file}`/run/credentials/biblioteca-almacenamiento.service/db-password`;
        on the database primary it sets the role's password. Read at run time,
        never copied into the Nix store.
      '';
    };

    ownerPasswordFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/biblioteca-owner-password";
      description = ''
        File holding the password of the schema owner
        ({option}`services.biblioteca.postgresql.ownerUser`). On the storage
        manager host it is handed to `biblioteca-migrate.service` alone (the
        storage manager never gets it); on the database primary it sets the
        role's password. Read at run time, never copied into the Nix store.
      '';
    };

    curve = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          CURVE encryption and authentication on every ZeroMQ endpoint: a
          `[curve]` section in every service's and the client's config (unless
          {option}`settings` sets one) and the services' key pairs as
          credentials. Needs the key pairs in {option}`keyDirectory` and the
          public keys below.
        '';
      };

      keyDirectory = mkOption {
        type = types.str;
        default = "/etc/biblioteca/credentials";
        description = ''
          Root-only directory on the host with this host's key pairs,
          `NAME.key_secret` for NAME in almacenamiento (storage manager), carga
          (load manager), actor (every actor instance), cliente (the client,
          for root) and operador (`biblioteca-failover`); make them with
          `biblioteca-claves generar NAME --dir DIR`. Never in the Nix store.
          Each service sees its own credential at the same path.
        '';
      };

      publicKeys = {
        almacenamiento = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "The storage manager's public key: the Z85 key or a `.key` file (outside keyDirectory).";
        };
        carga = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "The load manager's public key (Z85 or a `.key` file).";
        };
        actores = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Public keys of every actor host (Z85, `.key` files or directories of them).";
        };
        clientes = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Public keys allowed on the load manager's front-end (clients).";
        };
        operadores = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Public keys of `biblioteca-failover` operators, allowed on the storage manager.";
        };
      };
    };

    settings = {
      carga = settingsOption "carga" { };
      solicitante = settingsOption "solicitante" { };
      actor = settingsOption "actor" { };
      almacenamiento = settingsOption "almacenamiento" {
        state_dir = mkOption {
          type = types.nullOr types.str;
          default = "/var/lib/biblioteca";
          description = "Where the storage manager keeps what must survive restarts (its StateDirectory).";
        };
        database = mkOption {
          type = types.submodule {
            freeformType = format.type;
            options.password_file = mkOption {
              type = types.nullOr types.str;
              default =
                if cfg.databasePasswordFile != null
                then "${credentialsDir "biblioteca-almacenamiento"}/db-password"
                else null;
              defaultText = lib.literalExpression ''
                "/run/credentials/biblioteca-almacenamiento.service/db-password" when databasePasswordFile is set
              '';
              description = "Where the storage manager reads the application role's password.";
            };
          };
          default = { };
          description = "The `[database]` table: `nodes`, `pool_size`, timeouts, `password_file`.";
        };
      };
      failover = settingsOption "failover" {
        pg_bin = mkOption {
          type = types.str;
          default = "${lib.getBin (if pg.enable then pg.package else pkgs.postgresql)}/bin";
          defaultText = lib.literalExpression ''
            "''${lib.getBin config.services.postgresql.package}/bin" on a database host, else pkgs.postgresql's
          '';
          description = "PostgreSQL client and server binaries used by `biblioteca-failover`.";
        };
      };
    };

    postgresql = {
      enable = mkEnableOption "a PostgreSQL node of the biblioteca cluster on this host";

      role = mkOption {
        type = types.enum [ "primary" "standby" ];
        description = ''
          What this node is when first deployed. A standby clones the primary
          with `pg_basebackup -R` into an empty data directory before
          PostgreSQL first starts. After a failover, swap the roles here too.
        '';
      };

      nodeName = mkOption {
        type = types.strMatching "[A-Za-z0-9_-]+";
        default = pgCfg.role;
        defaultText = lib.literalExpression "config.services.biblioteca.postgresql.role";
        description = ''
          This node's name: its `cluster_name`, hence the `application_name`
          it streams under, and the name in the storage manager's and the
          failover tool's `nodes`.
        '';
      };

      peerName = mkOption {
        type = types.strMatching "[A-Za-z0-9_-]+";
        default = if isPrimary then "standby" else "primary";
        defaultText = lib.literalExpression ''if role == "primary" then "standby" else "primary"'';
        description = "The other node's name (the synchronous standby a primary waits for).";
      };

      primaryHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.1";
        description = "Address of the primary a standby clones and streams from.";
      };

      peerAddress = mkOption {
        type = types.str;
        example = "10.0.0.2";
        description = ''
          Address (or CIDR) of the other database node; the only one allowed
          to connect for replication (scram-sha-256).
        '';
      };

      clientAddresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.3" ];
        description = "Addresses (or CIDRs) of storage manager hosts, allowed to log in as the application role.";
      };

      adminAddresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.3" ];
        description = ''
          Addresses (or CIDRs) of hosts that run `biblioteca-failover`,
          allowed to log in as the `postgres` superuser with the password
          from {option}`adminPasswordFile` (promotion needs it).
        '';
      };

      port = mkOption {
        type = types.port;
        default = 5432;
        description = "PostgreSQL port.";
      };

      database = mkOption {
        type = types.str;
        default = "library";
        description = "The application database.";
      };

      user = mkOption {
        type = types.str;
        default = "app";
        description = "The application role (password: {option}`services.biblioteca.databasePasswordFile`).";
      };

      ownerUser = mkOption {
        type = types.str;
        default = "biblioteca_owner";
        description = ''
          The role owning {option}`database` and its schema
          (password: {option}`services.biblioteca.ownerPasswordFile`);
          `biblioteca-migrate.service` logs in as it.
        '';
      };

      replicationUser = mkOption {
        type = types.str;
        default = "replicator";
        description = "The role the standby streams as.";
      };

      replicationPasswordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/biblioteca-replication-password";
        description = ''
          File holding the replication role's password: set on the primary,
          used by the standby's `pg_basebackup -R` (which records it in the
          data directory's `postgresql.auto.conf`, mode 0600). Never copied
          into the Nix store.
        '';
      };

      adminPasswordFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          File holding a password for the `postgres` superuser, set on the
          primary, for `biblioteca-failover` connecting from
          {option}`adminAddresses`. Leave null to allow no remote superuser.
        '';
      };

      synchronous = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Make the primary wait for the standby ({option}`peerName`) to
          confirm every commit (`synchronous_standby_names`). A promoted
          standby runs without a synchronous peer until one rejoins.
        '';
      };
    };
  };

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
              LoadCredential = [ "owner-password:${cfg.ownerPasswordFile}" ];
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

    (mkIf pgCfg.enable {
      assertions = [
        {
          assertion = isPrimary || pgCfg.primaryHost != null;
          message = "services.biblioteca.postgresql.primaryHost must be set on a standby.";
        }
        {
          assertion = pgCfg.replicationPasswordFile != null;
          message = "services.biblioteca.postgresql.replicationPasswordFile must be set: replication uses scram-sha-256.";
        }
      ];

      networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ pgCfg.port ];

      services.postgresql = {
        enable = true;
        enableTCPIP = true;
        # Roles and the database replicate to the standby; creating them there
        # would fail (it is read-only).
        ensureDatabases = mkIf isPrimary [ pgCfg.database ];
        ensureUsers = mkIf isPrimary [
          {
            name = pgCfg.user;
            ensureClauses.login = true;
          }
          {
            name = pgCfg.ownerUser;
            ensureClauses.login = true;
          }
          {
            name = pgCfg.replicationUser;
            ensureClauses = {
              login = true;
              replication = true;
            };
          }
        ];
        settings = {
          inherit (pgCfg) port;
          cluster_name = pgCfg.nodeName;
          wal_level = "replica";
          max_wal_senders = 10;
          max_replication_slots = 10;
          # A standby that was briefly away catches up without a base backup.
          wal_keep_size = "1GB";
          hot_standby = true;
          # pg_rewind (biblioteca-failover rejoin) needs hint bits in the WAL.
          wal_log_hints = true;
          password_encryption = "scram-sha-256";
          synchronous_commit = "on";
          synchronous_standby_names =
            if isPrimary && pgCfg.synchronous then pgCfg.peerName else "";
        };
        authentication = lib.concatLines hbaLines;
      };

      systemd.services = mkMerge [
        (mkIf isPrimary {
          # Passwords come from files at run time, so they cannot be part of
          # ensureUsers.
          biblioteca-postgresql-passwords = {
            description = "Set the biblioteca database roles' passwords from their files";
            wantedBy = [ "multi-user.target" ];
            requires = [ "postgresql.service" ];
            wants = [ "postgresql-setup.service" ];
            after = [ "postgresql.service" "postgresql-setup.service" ];
            before = lib.optional (cfg.enable && cfg.components.almacenamiento.enable) "biblioteca-almacenamiento.service";
            path = [ pg.package ];
            environment = {
              PGPORT = pgPort;
              inherit PGOPTIONS;
            };
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              User = "postgres";
              Group = "postgres";
              LoadCredential =
                [ "replication-password:${pgCfg.replicationPasswordFile}" ]
                ++ lib.optional (cfg.databasePasswordFile != null) "db-password:${cfg.databasePasswordFile}"
                ++ lib.optional (cfg.ownerPasswordFile != null) "owner-password:${cfg.ownerPasswordFile}"
                ++ lib.optional (pgCfg.adminPasswordFile != null) "admin-password:${pgCfg.adminPasswordFile}";
              PrivateTmp = true;
              ProtectSystem = "strict";
              ProtectHome = true;
              NoNewPrivileges = true;
            };
            script = ''
              set -eu
              # postgresql-setup.service (ensureUsers) runs after postgresql
              # starts; older nixpkgs did the same in postgresql's postStart.
              until psql -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '${pgCfg.replicationUser}'" | grep -q 1; do
                sleep 1
              done
              set_password() {
                psql -d postgres -q -v ON_ERROR_STOP=1 -v role="$1" -v file="$CREDENTIALS_DIRECTORY/$2" -f ${setPasswordSql}
              }
              set_password ${lib.escapeShellArg pgCfg.replicationUser} replication-password
              if [ -e "$CREDENTIALS_DIRECTORY/db-password" ]; then
                set_password ${lib.escapeShellArg pgCfg.user} db-password
              fi
              if [ -e "$CREDENTIALS_DIRECTORY/owner-password" ]; then
                set_password ${lib.escapeShellArg pgCfg.ownerUser} owner-password
              fi
              if [ -e "$CREDENTIALS_DIRECTORY/admin-password" ]; then
                set_password postgres admin-password
              fi
              # The schema owner owns the database (and whatever the
              # application role owned in it before: older deployments); the
              # application role owns nothing and reads replication stats.
              psql -d postgres -q -v ON_ERROR_STOP=1 \
                -c ${lib.escapeShellArg ''ALTER DATABASE "${pgCfg.database}" OWNER TO "${pgCfg.ownerUser}"''} \
                -c ${lib.escapeShellArg ''GRANT pg_monitor TO "${pgCfg.user}"''}
              psql -d ${lib.escapeShellArg pgCfg.database} -q -v ON_ERROR_STOP=1 \
                -c ${lib.escapeShellArg ''REASSIGN OWNED BY "${pgCfg.user}" TO "${pgCfg.ownerUser}"''}
            '';
          };
        })

        (mkIf isPrimary {
          # ensureUsers/ensureDatabases commit before any standby exists.
          postgresql-setup.environment = { inherit PGOPTIONS; };
        })

        (mkIf (!isPrimary) {
          # An empty data directory on a standby is filled from the primary
          # before PostgreSQL ever starts, so the postgresql unit never runs
          # initdb there (it would make a second, diverging primary).
          biblioteca-postgresql-basebackup = {
            description = "Clone the biblioteca primary into this standby's data directory";
            requiredBy = [ "postgresql.service" ];
            before = [ "postgresql.service" ];
            wants = [ "network-online.target" ];
            after = [ "network-online.target" ];
            unitConfig.ConditionPathExists = "!${pg.dataDir}/PG_VERSION";
            path = [ pg.package ];
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              User = "postgres";
              Group = "postgres";
              LoadCredential = [ "replication-password:${pgCfg.replicationPasswordFile}" ];
              TimeoutStartSec = "30min";
              ReadWritePaths = [ pg.dataDir ];
              PrivateTmp = true;
              ProtectSystem = "strict";
              ProtectHome = true;
              NoNewPrivileges = true;
              UMask = "0077";
            };
            script = ''
              set -eu
              until pg_isready -q -h ${lib.escapeShellArg pgCfg.primaryHost} -p ${pgPort}; do
                echo "waiting for the primary ${pgCfg.primaryHost}:${pgPort}"
                sleep 2
              done
              # A half-finished clone from an earlier attempt is discarded.
              find ${lib.escapeShellArg pg.dataDir} -mindepth 1 -delete
              PGPASSWORD="$(cat "$CREDENTIALS_DIRECTORY/replication-password")"
              export PGPASSWORD
              pg_basebackup --no-password \
                -h ${lib.escapeShellArg pgCfg.primaryHost} -p ${pgPort} \
                -U ${lib.escapeShellArg pgCfg.replicationUser} \
                -D ${lib.escapeShellArg pg.dataDir} \
                -R -X stream -c fast
            '';
          };

          # nixpkgs' postgresql-setup waits until the server leaves recovery,
          # which a standby never does; it only needs to accept connections.
          postgresql-setup.script = lib.mkForce ''
            until ${pg.package}/bin/pg_isready -q -p ${pgPort}; do
              sleep 0.5
            done
          '';
        })
      ];

      systemd.tmpfiles.rules = mkIf (!isPrimary) [ "d ${pg.dataDir} 0700 postgres postgres - -" ];
    })
  ];
}
