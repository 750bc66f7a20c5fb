# Options of services.biblioteca that are not PostgreSQL's: which components
# run on this host, their secrets, CURVE keys and the services' settings
# (rendered to /etc/biblioteca/*.toml by ../services.nix).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkOption types;
  inherit (import ../lib.nix { inherit config lib pkgs; }) cfg pg format operations credentialsDir;

  settingsOption = name: extraOptions: extraText: mkOption {
    type = types.submodule {
      freeformType = format.type;
      options = extraOptions;
    };
    default = { };
    description = ''
      Contents of {file}`/etc/biblioteca/${name}.toml`. Keys are those of the
      service's config struct; unknown keys are rejected when the service
      starts (`--check-config` runs first), and unset keys keep the built-in
      defaults.${extraText}
    '';
  };
in
{
  options.services.biblioteca = {
    enable = mkEnableOption "the biblioteca library-loan services";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../../package.nix { };
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
      carga = settingsOption "carga" { } "";
      solicitante = settingsOption "solicitante" { } "";
      actor = settingsOption "actor" { } "";
      almacenamiento = settingsOption "almacenamiento"
        {
          state_dir = mkOption {
            type = types.nullOr types.str;
            default = "/var/lib/biblioteca";
            description = ''
              Where the storage manager keeps what must survive restarts (its
              StateDirectory): the newest timeline seen, and `roles.toml`, the
              nodes' roles as `biblioteca-failover` last set them, which
              override the roles of `database.nodes`.
            '';
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
        }
        ''

          Any other key the storage manager reads passes through unchanged,
          e.g. its replication mode (`replicacion = "estricta"` or
          `"disponible"`, and `degradar_tras`, default `"5s"`) in the table
          its documentation names; `--check-config` rejects what it does not
          know.

          After `biblioteca-failover promote|switchover|rejoin`, the roles in
          `database.nodes` no longer decide where writes go: the tool's
          {file}`''${state_dir}/roles.toml` overrides them, and this file
          (re-created by every switch and boot) is never written. Set the
          new roles in `database.nodes` (and in
          {option}`services.biblioteca.postgresql.role` on the database
          hosts) in your next deployment so the two agree; `biblioteca-failover
          status` shows which file set the roles.
        '';
      failover = settingsOption "failover"
        {
          pg_bin = mkOption {
            type = types.str;
            default = "${lib.getBin (if pg.enable then pg.package else pkgs.postgresql)}/bin";
            defaultText = lib.literalExpression ''
              "''${lib.getBin config.services.postgresql.package}/bin" on a database host, else pkgs.postgresql's
            '';
            description = "PostgreSQL client and server binaries used by `biblioteca-failover`.";
          };
        }
        ''

          `storage.config` names the storage manager's main file
          ({file}`/etc/biblioteca/almacenamiento.toml`); the tool reads it to
          find the roles file under its `state_dir` and writes only there.
        '';
    };
  };
}
