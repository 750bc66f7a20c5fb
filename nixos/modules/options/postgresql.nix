# Options of services.biblioteca.postgresql: this host's PostgreSQL node
# (primary or standby), its peers, roles and synchronous replication
# (configured by ../database.nix).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkOption types;
  inherit (import ../lib.nix { inherit config lib pkgs; }) pgCfg isPrimary;
in
{
  imports = [
    (lib.mkChangedOptionModule
      [ "services" "biblioteca" "postgresql" "peerAddress" ]
      [ "services" "biblioteca" "postgresql" "peerAddresses" ]
      (config: [ config.services.biblioteca.postgresql.peerAddress ]))
  ];
  options.services.biblioteca = {
    postgresql = {
      enable = mkEnableOption "a PostgreSQL node of the biblioteca cluster on this host";

      role = mkOption {
        type = types.enum [ "primary" "standby" ];
        description = ''
          What this node is when first deployed. A standby clones the primary
          with `pg_basebackup -R` into an empty data directory before
          PostgreSQL first starts. After a failover, set the new roles here
          (and {option}`primaryHost` on the standbys) in the next
          deployment: until then the promoted node keeps running as a primary
          (a data directory is never cloned twice, and `biblioteca-failover`'s
          `ALTER SYSTEM` settings win over this module's), and the storage
          manager follows the failover tool's roles file, not
          {option}`services.biblioteca.settings.almacenamiento`.
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
        description = ''
          The other node's name, with a single standby: the default of
          {option}`synchronousStandbys`.
        '';
      };

      synchronousStandbys = mkOption {
        type = types.listOf (types.strMatching "[A-Za-z0-9_-]+");
        default = [ pgCfg.peerName ];
        defaultText = lib.literalExpression "[ config.services.biblioteca.postgresql.peerName ]";
        example = [ "db2" "db3" ];
        description = ''
          Names (`cluster_name`, hence `application_name`) of the standbys a
          primary waits for. One standby: `synchronous_standby_names` is its
          name; two or more: `ANY k (s1, s2, ...)` with k =
          {option}`synchronousCount`, so a commit is acknowledged once k of
          them have it. List every standby the storage manager's
          `database.nodes` names.
        '';
      };

      synchronousCount = mkOption {
        type = types.ints.positive;
        default = 1;
        description = ''
          With several {option}`synchronousStandbys`: how many must confirm a
          commit (the k of `ANY k (...)`); at most their number.
        '';
      };

      primaryHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.1";
        description = ''
          Address of the primary a standby clones and streams from. Prefer an
          IP address to a name: a name that resolves to IPv6 first connects
          from an address pg_hba.conf may not list, and libpq does not try
          the next address after an authentication refusal.
        '';
      };

      peerAddresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "10.0.0.2" "fd00::2" "10.0.0.3" ];
        description = ''
          Every address (IPv4 and IPv6, or CIDRs) of every other database
          node: the only hosts allowed to connect for replication
          (scram-sha-256). Any node may become the primary, so list them on
          every node. IP addresses only: pg_hba.conf cannot take a host name
          as a CIDR.
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
          Make the primary wait for its standbys
          ({option}`synchronousStandbys`) to confirm every commit
          (`synchronous_standby_names`). A promoted standby runs with what
          `biblioteca-failover` set (`ALTER SYSTEM`, which wins over this
          file) until a standby rejoins.
        '';
      };

      basebackupAttempts = mkOption {
        type = types.ints.positive;
        default = 60;
        description = ''
          How often a standby's first clone (`pg_basebackup`) is tried, 5 s
          apart, emptying the data directory between tries: when every
          machine boots at once, the primary creates the replication role
          and its password after it first accepts connections. The unit
          fails after the last try (and PostgreSQL with it).
        '';
      };
    };
  };
}
