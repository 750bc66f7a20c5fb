# NixOS VM test: a primary with two synchronous standbys (quorum commit,
# `ANY 1 (db2, db3)`): writes go on with one standby down; after the
# primary's crash the other standby is promoted and nothing is lost.
# CURVE off (failover.nix covers it).
#
# Run with `nix build .#checks.x86_64-linux.failover-quorum`.
{ module }:

let
  secretFiles.systemd.tmpfiles.rules = [
    "d /var/lib/secrets 0700 root root - -"
    "f+ /var/lib/secrets/db-password 0400 root root - app-secret"
    "f+ /var/lib/secrets/owner-password 0400 root root - owner-secret"
    "f+ /var/lib/secrets/replication-password 0400 root root - replication-secret"
    "f+ /var/lib/secrets/admin-password 0400 root root - admin-secret"
  ];
  dbNames = [ "db1" "db2" "db3" ];
  # IPv4 and IPv6: a name would resolve to IPv6 first.
  addresses = node: [ node.networking.primaryIPAddress node.networking.primaryIPv6Address ];

  dbNode = name: { nodes, lib, ... }: {
    imports = [ module secretFiles ];
    services.biblioteca = {
      databasePasswordFile = "/var/lib/secrets/db-password";
      ownerPasswordFile = "/var/lib/secrets/owner-password";
      openFirewall = true;
      postgresql = {
        enable = true;
        role = if name == "db1" then "primary" else "standby";
        nodeName = name;
        primaryHost = if name == "db1" then null else nodes.db1.networking.primaryIPAddress;
        synchronousStandbys = [ "db2" "db3" ];
        peerAddresses = lib.concatMap (n: addresses nodes.${n}) (lib.remove name dbNames);
        clientAddresses = addresses nodes.app;
        adminAddresses = addresses nodes.app;
        replicationPasswordFile = "/var/lib/secrets/replication-password";
        adminPasswordFile = "/var/lib/secrets/admin-password";
      };
    };
  };
  conninfo = node: user: "host=${node.networking.primaryIPAddress} port=5432 user=${user} dbname=library";
in
{
  name = "biblioteca-failover-quorum";

  nodes = {
    db1 = dbNode "db1";
    db2 = dbNode "db2";
    db3 = dbNode "db3";
    app = { nodes, ... }: {
      imports = [ module secretFiles ];
      services.biblioteca = {
        enable = true;
        databasePasswordFile = "/var/lib/secrets/db-password";
        ownerPasswordFile = "/var/lib/secrets/owner-password";
        curve.enable = false;
        components.failover = {
          enable = true;
          passwordFile = "/var/lib/secrets/admin-password";
        };
        settings = {
          almacenamiento.database.nodes = map
            (n: { name = n; conninfo = conninfo nodes.${n} "app"; role = if n == "db1" then "primary" else "standby"; })
            dbNames;
          failover = {
            nodes = map (n: { name = n; conninfo = conninfo nodes.${n} "postgres"; }) dbNames;
            storage = {
              config = "/etc/biblioteca/almacenamiento.toml";
              reload = "systemd";
            };
          };
        };
      };
    };
  };

  testScript = ''
    import shlex

    CLIENT = "biblioteca-solicitante --config /etc/biblioteca/solicitante.toml"

    def sql(machine, query, db="library"):
        return machine.succeed(
            f"runuser -u postgres -- psql -d {db} -tAc " + shlex.quote(query)
        ).strip()

    def loan(n, user):
        # One request id per loan, however often it is retried.
        isbn = "978-0134685991" if n % 2 else "978-0135957059"
        app.wait_until_succeeds(f"{CLIENT} prestamo --id quorum-{user} {isbn} {user}", timeout=60)

    start_all()

    with subtest("both standbys stream as a quorum"):
        db1.wait_for_unit("biblioteca-postgresql-passwords.service")
        for standby in [db2, db3]:
            standby.wait_for_unit("postgresql.service")
        assert sql(db1, "SHOW synchronous_standby_names", "postgres") == "ANY 1 (db2, db3)"
        db1.wait_until_succeeds(
            "test \"$(runuser -u postgres -- psql -tAc "
            + shlex.quote("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'")
            + ")\" = 2"
        )

    with subtest("loans go on with one standby down"):
        app.wait_for_unit("biblioteca.target")
        loan(1, "uno")
        db3.crash()
        loan(2, "dos")
        assert sql(db1, "SELECT count(*) FROM prestamos WHERE usuario IN ('uno', 'dos')") == "2"

    with subtest("the primary dies; the remaining standby is promoted"):
        lsn = sql(db1, "SELECT pg_current_wal_flush_lsn()")
        db2.wait_until_succeeds(
            "runuser -u postgres -- psql -tAc "
            + shlex.quote(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")
            + " | grep -qx t"
        )
        db1.crash()
        app.succeed("biblioteca-failover --config /etc/biblioteca/failover.toml promote --node db2 >&2")
        app.succeed("grep -qx 'db2 = \"primary\"' /var/lib/biblioteca/roles.toml")
        assert sql(db2, "SELECT count(*) FROM prestamos WHERE usuario IN ('uno', 'dos')") == "2"
        loan(3, "tres")
        assert sql(db2, "SELECT estado FROM prestamos WHERE usuario = 'tres'") == "ACTIVO"
  '';
}
