# A PostgreSQL node of the biblioteca cluster on this host: a primary (roles,
# passwords, synchronous_standby_names) or a standby cloned from it before
# PostgreSQL first starts; pg_hba.conf admits only the configured peers.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkIf mkMerge;
  inherit (import ./lib.nix { inherit config lib pkgs; }) cfg pgCfg pg isPrimary;

  # A bare IPv4 or IPv6 address becomes a single-host CIDR for pg_hba.conf;
  # anything else (a host name) is refused by an assertion (isAddress), since
  # `name/32` is no valid pg_hba.conf line and names may resolve to either
  # family.
  ipv4 = "([0-9]{1,3}[.]){3}[0-9]{1,3}";
  ipv6 = "[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*";
  isAddress = a: builtins.match "(${ipv4}|${ipv6})(/[0-9]{1,3})?" a != null;
  cidr = addr:
    if lib.hasInfix "/" addr then addr
    else if lib.hasInfix ":" addr then "${addr}/128"
    else "${addr}/32";
  hbaAddresses = pgCfg.peerAddresses ++ pgCfg.clientAddresses ++ pgCfg.adminAddresses;

  # synchronous_standby_names: one standby by its name, several as a quorum.
  ssnName = n: if builtins.match "[A-Za-z_][A-Za-z0-9_]*" n != null then n else ''"${n}"'';
  syncStandbys = pgCfg.synchronousStandbys;
  synchronousStandbyNames =
    if !(isPrimary && pgCfg.synchronous) || syncStandbys == [ ] then ""
    else if lib.length syncStandbys == 1 then ssnName (lib.head syncStandbys)
    else "ANY ${toString pgCfg.synchronousCount} (${lib.concatMapStringsSep ", " ssnName syncStandbys})";

  # psql reads the password file itself (a backquoted `cat`), so the
  # password is on no command line and in no environment.
  setPasswordSql = pkgs.writeText "biblioteca-set-password.sql" ''
    \set pw `cat :'file'`
    ALTER ROLE :"role" WITH LOGIN PASSWORD :'pw';
    \unset pw
  '';

  # Only the peer may replicate, only storage manager hosts may log in as the
  # application role and the schema owner (migrations), only failover hosts
  # as the superuser (also for replication: rejoin); all with SCRAM.
  hbaLines =
    map (a: "host replication ${pgCfg.replicationUser} ${cidr a} scram-sha-256") pgCfg.peerAddresses
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
  config = mkIf pgCfg.enable {
    assertions = [
      {
        assertion = isPrimary || pgCfg.primaryHost != null;
        message = "services.biblioteca.postgresql.primaryHost must be set on a standby.";
      }
      {
        assertion = pgCfg.replicationPasswordFile != null;
        message = "services.biblioteca.postgresql.replicationPasswordFile must be set: replication uses scram-sha-256.";
      }
      {
        assertion = pgCfg.peerAddresses != [ ];
        message = "services.biblioteca.postgresql.peerAddresses must list the other database nodes' addresses (IPv4 and IPv6).";
      }
      {
        assertion = lib.all isAddress hbaAddresses;
        message = "services.biblioteca.postgresql: peerAddresses, clientAddresses and adminAddresses take IP addresses or CIDRs, not host names: ${lib.concatStringsSep ", " (lib.filter (a: !isAddress a) hbaAddresses)}.";
      }
      {
        assertion = !(isPrimary && pgCfg.synchronous) || pgCfg.synchronousCount <= lib.length syncStandbys;
        message = "services.biblioteca.postgresql.synchronousCount (${toString pgCfg.synchronousCount}) exceeds the number of synchronousStandbys (${toString (lib.length syncStandbys)}).";
      }
    ];

    warnings = lib.optional (!isPrimary && pgCfg.primaryHost != null && !isAddress pgCfg.primaryHost)
      "services.biblioteca.postgresql.primaryHost = \"${pgCfg.primaryHost}\" is a name: if it resolves to an address pg_hba.conf on the primary does not list (IPv6 first), the clone fails; prefer the primary's IP address.";

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
        synchronous_standby_names = synchronousStandbyNames;
        # A silent network (a cut link, a frozen host) noticed in seconds,
        # not after the 60 s defaults (docs/failover.md, "Network faults").
        wal_sender_timeout = "10s";
        wal_receiver_timeout = "10s";
        wal_receiver_status_interval = "2s";
        wal_retrieve_retry_interval = "2s";
        tcp_keepalives_idle = 5;
        tcp_keepalives_interval = 2;
        tcp_keepalives_count = 3;
        tcp_user_timeout = "10s";
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
              [ "replication-password:${toString pgCfg.replicationPasswordFile}" ]
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
            LoadCredential = [ "replication-password:${toString pgCfg.replicationPasswordFile}" ];
            TimeoutStartSec = "30min";
            ReadWritePaths = [ pg.dataDir ];
            PrivateTmp = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            NoNewPrivileges = true;
            UMask = "0077";
          };
          # Booting with the primary, the replication role or its
          # password may not exist yet: retry (bounded), from an empty
          # directory each time.
          script = ''
            set -eu
            host=${lib.escapeShellArg (toString pgCfg.primaryHost)}
            PGPASSWORD="$(cat "$CREDENTIALS_DIRECTORY/replication-password")"
            export PGPASSWORD
            attempt=1
            while :; do
              find ${lib.escapeShellArg pg.dataDir} -mindepth 1 -delete
              if pg_isready -q -h "$host" -p ${pgPort} \
                && pg_basebackup --no-password -h "$host" -p ${pgPort} \
                  -U ${lib.escapeShellArg pgCfg.replicationUser} \
                  -D ${lib.escapeShellArg pg.dataDir} -R -X stream -c fast; then
                exit 0
              fi
              if [ "$attempt" -ge ${toString pgCfg.basebackupAttempts} ]; then
                echo "no clone of $host:${pgPort} after $attempt attempts; giving up" >&2
                find ${lib.escapeShellArg pg.dataDir} -mindepth 1 -delete
                exit 1
              fi
              echo "clone of $host:${pgPort} failed (attempt $attempt of ${toString pgCfg.basebackupAttempts}); retrying in 5 s"
              attempt=$((attempt + 1))
              sleep 5
            done
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
  };
}
