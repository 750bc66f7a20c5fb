# NixOS VM test: the reference scenario (/work/shared/seed/e2e-guide.md) on
# three machines, then a crash of the primary and a manual failover.
#
#   primary  PostgreSQL primary (synchronous replication to `standby`)
#   standby  PostgreSQL standby, cloned with pg_basebackup -R at first boot
#   app      storage manager (and biblioteca-migrate.service before it), load
#            manager, the three actors, the client and biblioteca-failover;
#            CURVE on (the module's default) with key pairs made at boot
#
# Run with `nix build .#checks.x86_64-linux.failover` (or `nix flake check`).
{ module }:

let
  # Test-only secrets. tmpfiles writes them at boot (mode 0400, root); they
  # reach the services through LoadCredential= like real ones would.
  secrets = {
    db = "app-secret";
    owner = "owner-secret";
    replication = "replication-secret";
    admin = "admin-secret";
  };
  secretFiles = {
    systemd.tmpfiles.rules = [
      "d /var/lib/secrets 0700 root root - -"
      "f+ /var/lib/secrets/db-password 0400 root root - ${secrets.db}"
      "f+ /var/lib/secrets/owner-password 0400 root root - ${secrets.owner}"
      "f+ /var/lib/secrets/replication-password 0400 root root - ${secrets.replication}"
      "f+ /var/lib/secrets/admin-password 0400 root root - ${secrets.admin}"
    ];
  };

  dbNode = role: peer: { nodes, ... }: {
    imports = [ module secretFiles ];
    virtualisation.memorySize = 1024;
    services.biblioteca = {
      databasePasswordFile = "/var/lib/secrets/db-password";
      ownerPasswordFile = "/var/lib/secrets/owner-password";
      openFirewall = true;
      postgresql = {
        enable = true;
        inherit role;
        primaryHost = if role == "standby" then "primary" else null;
        peerAddress = nodes.${peer}.networking.primaryIPAddress;
        clientAddresses = [ nodes.app.networking.primaryIPAddress ];
        adminAddresses = [ nodes.app.networking.primaryIPAddress ];
        replicationPasswordFile = "/var/lib/secrets/replication-password";
        adminPasswordFile = "/var/lib/secrets/admin-password";
      };
    };
  };

  conninfo = host: user: "host=${host} port=5432 user=${user} dbname=library";

  # Test-only CURVE key pairs, made at boot on the app machine before any
  # service: secret keys in the module's keyDirectory, public ones where the
  # options below name them.
  publicDir = "/var/lib/biblioteca-public";
  keyNames = [ "almacenamiento" "carga" "actor" "cliente" "operador" ];
  testKeys = { config, ... }: {
    systemd.services.biblioteca-test-keys = {
      description = "Test-only biblioteca CURVE key pairs";
      wantedBy = [ "multi-user.target" ];
      before = [ "biblioteca.target" "biblioteca-carga.service" "biblioteca-almacenamiento.service" ]
        ++ map (op: "biblioteca-actor@${op}.service") config.services.biblioteca.components.actores;
      requiredBy = [ "biblioteca.target" ];
      after = [ "systemd-tmpfiles-setup.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        set -eu
        install -d -m 0755 ${publicDir}
        for name in ${toString keyNames}; do
          if [ ! -e ${config.services.biblioteca.curve.keyDirectory}/$name.key_secret ]; then
            ${config.services.biblioteca.package}/bin/biblioteca-claves generar $name \
              --dir ${config.services.biblioteca.curve.keyDirectory}
          fi
          install -m 0644 ${config.services.biblioteca.curve.keyDirectory}/$name.key ${publicDir}/$name.key
        done
      '';
    };
  };
in
{
  name = "biblioteca-failover";

  nodes = {
    primary = dbNode "primary" "standby";
    standby = dbNode "standby" "primary";

    app = { ... }: {
      imports = [ module secretFiles testKeys ];
      virtualisation.memorySize = 1024;
      services.biblioteca = {
        enable = true;
        openFirewall = true;
        databasePasswordFile = "/var/lib/secrets/db-password";
        ownerPasswordFile = "/var/lib/secrets/owner-password";
        curve.publicKeys = {
          almacenamiento = "${publicDir}/almacenamiento.key";
          carga = "${publicDir}/carga.key";
          actores = [ "${publicDir}/actor.key" ];
          clientes = [ "${publicDir}/cliente.key" ];
          operadores = [ "${publicDir}/operador.key" ];
        };
        components.failover = {
          enable = true;
          # The superuser's password, as a file the tool reads (password_file).
          passwordFile = "/var/lib/secrets/admin-password";
        };
        settings = {
          almacenamiento.database.nodes = [
            {
              name = "primary";
              conninfo = conninfo "primary" "app";
              role = "primary";
            }
            {
              name = "standby";
              conninfo = conninfo "standby" "app";
              role = "standby";
            }
          ];
          failover = {
            nodes = [
              {
                name = "primary";
                conninfo = conninfo "primary" "postgres";
              }
              {
                name = "standby";
                conninfo = conninfo "standby" "postgres";
              }
            ];
            storage = {
              endpoint = "tcp://127.0.0.1:5570";
              config = "/etc/biblioteca/almacenamiento.toml";
              reload = "systemd";
              unit = "biblioteca-almacenamiento.service";
            };
          };
        };
      };
    };
  };

  testScript = ''
    import shlex

    ISBN = "978-0134685991"
    USER = "usuario_test_1"

    def sql(machine, query):
        return machine.succeed(
            "runuser -u postgres -- psql -d library -tAc " + shlex.quote(query)
        ).strip()

    CLIENT = "biblioteca-solicitante --config /etc/biblioteca/solicitante.toml"

    def client(*args):
        return app.succeed(CLIENT + " --json " + " ".join(shlex.quote(a) for a in args))

    start_all()

    with subtest("the database pair comes up replicating synchronously"):
        primary.wait_for_unit("postgresql.service")
        primary.wait_for_unit("biblioteca-postgresql-passwords.service")
        standby.wait_for_unit("biblioteca-postgresql-basebackup.service")
        standby.wait_for_unit("postgresql.service")
        primary.wait_until_succeeds(
            "runuser -u postgres -- psql -tAc "
            + shlex.quote("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")
            + " | grep -qx sync"
        )
        assert sql(standby, "SELECT pg_is_in_recovery()") == "t"

    with subtest("every service reports ready"):
        app.wait_for_unit("biblioteca.target")
        for unit in ["biblioteca-almacenamiento", "biblioteca-carga",
                     "biblioteca-actor@prestamo", "biblioteca-actor@devolucion",
                     "biblioteca-actor@renovacion"]:
            app.wait_for_unit(unit + ".service")
        app.wait_for_open_port(5555)
        app.wait_for_open_port(5570)
        app.succeed("systemctl reload biblioteca.target")
        app.wait_for_unit("biblioteca-almacenamiento.service")

    with subtest("the schema owner migrated the schema; app owns nothing"):
        app.succeed("test \"$(systemctl show -p Result --value biblioteca-migrate.service)\" = success")
        assert sql(primary, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'library'") == "biblioteca_owner"
        assert sql(primary, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'biblioteca_owner'") == "0"
        app.fail("ls /run/credentials/biblioteca-almacenamiento.service | grep owner")

    with subtest("CURVE everywhere: a client without a key is not answered"):
        for f in ["carga", "almacenamiento", "actor", "solicitante"]:
            app.succeed(f"grep -q '^\\[curve\\]' /etc/biblioteca/{f}.toml")
        app.succeed("grep -q '^\\[storage.curve\\]' /etc/biblioteca/failover.toml")
        app.fail(f"biblioteca-solicitante --timeout 1500ms --retries 1 consulta {ISBN}")
        # Passwords only in files: none in a config (the store holds them).
        app.fail("grep -rlE '${secrets.db}|${secrets.owner}|${secrets.admin}' /etc/biblioteca/*.toml")

    with subtest("the guide's catalogue is there"):
        primary.wait_until_succeeds(
            "test \"$(runuser -u postgres -- psql -d library -tAc 'SELECT count(*) FROM libros')\" = 4"
        )
        before = int(sql(primary, f"SELECT ejemplares FROM libros WHERE isbn = '{ISBN}'"))

    with subtest("consulta, prestamo, replication"):
        app.wait_until_succeeds(f"{CLIENT} consulta {ISBN}")
        client("prestamo", ISBN, USER)
        assert sql(primary, f"SELECT estado FROM prestamos WHERE usuario = '{USER}'") == "ACTIVO"
        assert int(sql(primary, f"SELECT ejemplares FROM libros WHERE isbn = '{ISBN}'")) == before - 1
        standby.wait_until_succeeds(
            "runuser -u postgres -- psql -d library -tAc "
            + shlex.quote(f"SELECT estado FROM prestamos WHERE usuario = '{USER}'")
            + " | grep -qx ACTIVO"
        )

    with subtest("two renewals, the third is refused"):
        client("renovacion", ISBN, USER)
        client("renovacion", ISBN, USER)
        assert sql(primary, f"SELECT renovaciones FROM prestamos WHERE usuario = '{USER}'") == "2"
        status, out = app.execute(f"{CLIENT} --json renovacion {ISBN} {USER}")
        assert status == 1, f"third renewal: exit {status}: {out}"
        assert "LimiteRenovaciones" in out, out

    with subtest("devolucion"):
        client("devolucion", ISBN, USER)
        assert sql(primary, f"SELECT estado FROM prestamos WHERE usuario = '{USER}'") == "DEVUELTO"
        assert int(sql(primary, f"SELECT ejemplares FROM libros WHERE isbn = '{ISBN}'")) == before

    with subtest("ten loans in a row (test_masivo)"):
        isbns = ["978-0134685991", "978-0135957059", "978-0596007126", "978-1491950357"]
        for i in range(10):
            client("prestamo", isbns[i % 4], f"usuario_carga_{i}")
        assert sql(primary, "SELECT count(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%'") == "10"
        # Synchronous replication: committed on the standby too.
        assert sql(standby, "SELECT count(*) FROM prestamos WHERE usuario LIKE 'usuario_carga_%'") == "10"

    libros = sql(primary, "SELECT count(*) FROM libros")
    prestamos = sql(primary, "SELECT count(*) FROM prestamos")

    with subtest("the primary dies and the standby is promoted"):
        primary.crash()
        app.succeed("biblioteca-failover --config /etc/biblioteca/failover.toml status >&2 || true")
        app.succeed("biblioteca-failover --config /etc/biblioteca/failover.toml promote >&2")
        standby.wait_until_succeeds(
            "test \"$(runuser -u postgres -- psql -tAc 'SELECT pg_is_in_recovery()')\" = f"
        )
        app.succeed("grep -q fenced /etc/biblioteca/almacenamiento.toml")

    with subtest("nothing was lost"):
        assert sql(standby, "SELECT count(*) FROM libros") == libros
        assert sql(standby, "SELECT count(*) FROM prestamos") == prestamos

    with subtest("a new loan after the failover"):
        app.wait_until_succeeds(f"{CLIENT} prestamo 978-0596007126 usuario_post_failover", timeout=60)
        assert sql(standby, "SELECT estado FROM prestamos WHERE usuario = 'usuario_post_failover'") == "ACTIVO"
        app.succeed("systemctl is-active biblioteca-almacenamiento.service")
  '';
}
