# Deployments of nixos/module.nix evaluated with nixpkgs' lib.evalModules
# against a small stand-in for the NixOS options the module sets (declared
# with nixpkgs' names and types, so a misspelt option fails to evaluate) and
# a stand-in `pkgs`. Each scenario returns named checks; tests/static/nix_eval.sh
# prints them as PASS/FAIL.
#   nix-instantiate --eval --strict --json nix_scenarios.nix \
#     --arg lib 'import NIXPKGS_LIB/lib' --argstr repo "$PWD" --argstr scenario primary
{ lib, repo, scenario ? null, part ? "checks" }:
let
  inherit (lib) mkOption types;

  fake = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";
  } // extra;
  pg = major: fake "postgresql-${major}" { psqlSchema = major; };
  pkgs = lib.fix (self: {
    inherit lib;
    formats.toml = _: {
      type = with types; let v = oneOf [ bool int float str path (attrsOf v) (listOf v) ]; in v;
      generate = name: value: fake name { inherit value; };
    };
    writeText = name: text: fake name { inherit text; };
    stdenv.hostPlatform.system = "x86_64-linux";
    coreutils = fake "coreutils" { };
    pkg-config = fake "pkg-config" { };
    zeromq = fake "zeromq" { };
    makeWrapper = fake "make-wrapper" { };
    dejavu_fonts = fake "dejavu-fonts" { };
    postgresql = pg "17";
    postgresql_17 = pg "17";
    rustPlatform.buildRustPackage = args: fake args.pname { inherit args; };
    callPackage = lib.callPackageWith self;
  });

  unitOption = types.oneOf [ types.bool types.int types.str (types.listOf types.str) ];
  units = mkOption { type = types.listOf types.str; default = [ ]; };
  unitCommon = {
    description = mkOption { type = types.str; default = ""; };
    wants = units;
    after = units;
    before = units;
    requires = units;
    requiredBy = units;
    wantedBy = units;
    partOf = units;
    unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
  };
  service = types.submodule {
    options = unitCommon // {
      environment = mkOption { type = types.attrsOf (types.nullOr types.str); default = { }; };
      path = mkOption { type = types.listOf types.package; default = [ ]; };
      serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      script = mkOption { type = types.lines; default = ""; };
      restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    };
  };

  # The options of NixOS (and of nixos/lib/testing) the module and the VM
  # tests set; services.postgresql as in nixos/modules/services/databases/postgresql.nix.
  nixosStub = { config, ... }: {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      environment.etc = mkOption {
        default = { };
        type = types.attrsOf (types.submodule {
          options.source = mkOption { type = types.unspecified; };
          options.mode = mkOption { type = types.str; default = "symlink"; };
        });
      };
      systemd.services = mkOption { type = types.attrsOf service; default = { }; };
      systemd.targets = mkOption { type = types.attrsOf (types.submodule { options = unitCommon; }); default = { }; };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      # As nixos/modules/services/monitoring/prometheus (scrape configs are
      # submodules there; their keys are checked by Prometheus itself).
      services.prometheus.scrapeConfigs = mkOption { type = types.listOf (types.attrsOf types.unspecified); default = [ ]; };
      services.prometheus.ruleFiles = mkOption { type = types.listOf types.path; default = [ ]; };
      networking.primaryIPAddress = mkOption { type = types.str; default = ""; };
      networking.primaryIPv6Address = mkOption { type = types.str; default = ""; };
      virtualisation.memorySize = mkOption { type = types.ints.positive; default = 1024; };
      services.postgresql = {
        enable = mkOption { type = types.bool; default = false; };
        enableTCPIP = mkOption { type = types.bool; default = false; };
        package = mkOption { type = types.package; default = pkgs.postgresql_17; };
        dataDir = mkOption { type = types.path; default = "/var/lib/postgresql/${config.services.postgresql.package.psqlSchema}"; };
        authentication = mkOption { type = types.lines; default = ""; };
        ensureDatabases = mkOption { type = types.listOf types.str; default = [ ]; };
        ensureUsers = mkOption {
          default = [ ];
          type = types.listOf (types.submodule {
            options.name = mkOption { type = types.str; };
            options.ensureClauses = lib.genAttrs [ "login" "replication" "superuser" ]
              (_: mkOption { type = types.nullOr types.bool; default = null; });
          });
        };
        settings = mkOption {
          default = { };
          type = types.submodule {
            freeformType = types.attrsOf (types.oneOf [ types.bool types.float types.int types.str ]);
            options.port = mkOption { type = types.port; default = 5432; };
          };
        };
      };
    };
  };

  module = /. + "${repo}/nixos/module.nix";
  vmTest = import (/. + "${repo}/nixos/tests/failover.nix") { inherit module; };
  quorumTest = import (/. + "${repo}/nixos/tests/failover-quorum.nix") { inherit module; };
  # nixos/lib/testing/network.nix: node numbers in attrNames order.
  addressesOf = test: lib.listToAttrs (lib.imap1
    (i: n: lib.nameValuePair n {
      networking.primaryIPAddress = "192.168.1.${toString i}";
      networking.primaryIPv6Address = "2001:db8:1::${toString i}";
    })
    (lib.attrNames test.nodes));

  evalWith = nodes: modules: (lib.evalModules {
    modules = [ nixosStub { _module.args = { inherit pkgs nodes; }; } ] ++ modules;
  }).config;
  eval = evalWith (addressesOf vmTest);

  secrets.services.biblioteca = {
    databasePasswordFile = "/run/secrets/db";
    ownerPasswordFile = "/run/secrets/owner";
  };
  keys.services.biblioteca.curve.publicKeys = {
    almacenamiento = "/etc/biblioteca/public/almacenamiento.key";
    carga = "/etc/biblioteca/public/carga.key";
    actores = [ "/etc/biblioteca/public/actor.key" ];
    clientes = [ "/etc/biblioteca/public/cliente.key" ];
    operadores = [ "/etc/biblioteca/public/operador.key" ];
  };
  storageNodes = conninfo: {
    services.biblioteca.settings.almacenamiento.database.nodes = [
      { name = "db1"; conninfo = conninfo "10.0.0.1"; role = "primary"; }
      { name = "db2"; conninfo = conninfo "10.0.0.2"; role = "standby"; }
    ];
  };
  kv = host: "host=${host} port=5432 dbname=library";
  db = role: extra: {
    services.biblioteca.postgresql = {
      enable = true;
      inherit role;
      nodeName = if role == "primary" then "db1" else "db2";
      peerName = if role == "primary" then "db2" else "db1";
      primaryHost = if role == "primary" then null else "10.0.0.1";
      peerAddresses = [ "10.0.0.2" "fd00::2" ];
      clientAddresses = [ "10.0.0.3" ];
      replicationPasswordFile = "/run/secrets/repl";
    } // extra;
  };

  etcdMembers = [ "http://10.0.0.1:2379" "http://10.0.0.2:2379" "http://10.0.0.5:2379" ];
  agentOn = endpoints: {
    services.biblioteca = {
      enable = true;
      components.failover.enable = true;
      settings.failover.nodes = [
        { name = "db1"; conninfo = kv "10.0.0.1"; data_dir = "/var/lib/postgresql/15"; }
        { name = "db2"; conninfo = kv "10.0.0.2"; }
      ];
      failoverAgent = {
        enable = true;
        etcdEndpoints = endpoints;
      };
    };
  };

  # What a check looks at.
  failed = cfg: map (a: a.message) (lib.filter (a: !a.assertion) cfg.assertions);
  hba = cfg: lib.splitString "\n" cfg.services.postgresql.authentication;
  ssn = cfg: cfg.services.postgresql.settings.synchronous_standby_names;
  toml = cfg: name: cfg.environment.etc."biblioteca/${name}.toml".source.value;
  svc = cfg: name: cfg.systemd.services.${name};
  # Every unit, file and setting forced: a `null` where a string belongs
  # fails here, as it would when NixOS builds the system.
  forced = cfg: builtins.deepSeq
    [
      (lib.mapAttrs (_: s: [ s.serviceConfig s.script s.environment ]) cfg.systemd.services)
      (lib.mapAttrs (_: e: e.source.value or e.source.outPath) cfg.environment.etc)
      cfg.services.postgresql.settings
      cfg.services.postgresql.authentication
    ]
    true;
  check = name: ok: { inherit name ok; };
  hasMessage = cfg: part: lib.any (m: lib.hasInfix part m) (failed cfg);
  noHostnameCidr = cfg: lib.all (l: builtins.match ".*[a-z]+/(32|128).*" l == null) (hba cfg);
  common = cfg: [
    (check "no failed assertion" (failed cfg == [ ]))
    (check "no warning" (cfg.warnings == [ ]))
    (check "every unit and file evaluates" (forced cfg))
  ];

  scenarios = {
    primary = cfg: common cfg ++ [
      (check "replication allowed from the peer's IPv4 and IPv6 addresses"
        (lib.elem "host replication replicator 10.0.0.2/32 scram-sha-256" (hba cfg)
          && lib.elem "host replication replicator fd00::2/128 scram-sha-256" (hba cfg)))
      (check "pg_hba.conf has no host name as a CIDR" (noHostnameCidr cfg))
      (check "one standby: synchronous_standby_names is its name" (ssn cfg == "db2"))
      (check "passwords unit after postgresql-setup"
        (lib.elem "postgresql-setup.service" (svc cfg "biblioteca-postgresql-passwords").after))
    ];
    standby = cfg: common cfg ++ [
      (check "no synchronous standbys on a standby" (ssn cfg == ""))
      (check "base backup retries a bounded number of times, emptying the data directory"
        (
          let s = (svc cfg "biblioteca-postgresql-basebackup").script; in
          lib.hasInfix "attempt\" -ge 60" s && lib.hasInfix "while :" s && lib.hasInfix "-mindepth 1 -delete" s
        ))
      (check "base backup clones from the primary's address" (lib.hasInfix "host=10.0.0.1" (svc cfg "biblioteca-postgresql-basebackup").script))
    ];
    app = cfg: common cfg ++ [
      (check "CURVE on: every service config has [curve]"
        (lib.all (n: (toml cfg n) ? curve) [ "almacenamiento" "carga" "actor" "solicitante" ]))
      (check "the migration logs in as the schema owner"
        (lib.all (n: lib.hasSuffix " user=biblioteca_owner" n.conninfo) (toml cfg "migrate").database.nodes))
      (check "the storage manager has its state directory (roles file)"
        ((svc cfg "biblioteca-almacenamiento").serviceConfig.StateDirectory == "biblioteca"
          && (toml cfg "almacenamiento").state_dir == "/var/lib/biblioteca"))
      (check "passwords reach the services as credentials"
        (lib.elem "db-password:/run/secrets/db" (svc cfg "biblioteca-almacenamiento").serviceConfig.LoadCredential))
      (check "metrics on 127.0.0.1 by default, at the documented ports, not scraped nor opened"
        ((toml cfg "carga").metrics == { enabled = true; listen_address = "127.0.0.1"; port = 9555; }
          && (toml cfg "almacenamiento").metrics.port == 9570
          && !((toml cfg "actor").metrics ? port)
          && cfg.services.prometheus.scrapeConfigs == [ ]
          && cfg.networking.firewall.allowedTCPPorts == [ ]))
    ];
    app-metrics = cfg: common cfg ++ [
      (check "metrics.openFirewall opens the five metrics ports only"
        (lib.sort lib.lessThan cfg.networking.firewall.allowedTCPPorts == [ 9556 9570 9571 9572 9573 ]))
      (check "metrics.scrape adds one job with this host's five targets and the alert rules"
        (
          let job = lib.head cfg.services.prometheus.scrapeConfigs; in
          lib.length cfg.services.prometheus.scrapeConfigs == 1
            && job.job_name == "biblioteca"
            && (lib.head job.static_configs).targets == map (p: "10.0.0.3:${toString p}") [ 9556 9570 9571 9572 9573 ]
            && lib.length cfg.services.prometheus.ruleFiles == 1
        ))
      (check "listenAddress and ports reach the TOML files"
        ((toml cfg "carga").metrics.listen_address == "0.0.0.0" && (toml cfg "carga").metrics.port == 9556))
      (check "failover.toml names the textfile directory"
        ((toml cfg "failover").textfile_dir == "/var/lib/node-exporter"))
    ];
    app-metrics-off = cfg: common cfg ++ [
      (check "metrics.enable = false: every service's endpoint off, nothing scraped or opened"
        (lib.all (n: !(toml cfg n).metrics.enabled) [ "carga" "almacenamiento" "actor" ]
          && cfg.services.prometheus.scrapeConfigs == [ ]
          && cfg.networking.firewall.allowedTCPPorts == [ ]))
    ];
    app-plain = cfg: common cfg ++ [
      (check "CURVE off: no [curve] anywhere"
        (lib.all (n: !((toml cfg n) ? curve)) [ "almacenamiento" "carga" "actor" "solicitante" ]))
      (check "a URI conninfo gets the owner as a parameter"
        (lib.all (n: lib.hasSuffix "?sslmode=prefer&user=biblioteca_owner" n.conninfo) (toml cfg "migrate").database.nodes))
      (check "replication mode keys pass through settings"
        ((toml cfg "almacenamiento").replication.replicacion == "disponible"))
    ];
    single-host = cfg: common cfg ++ [
      (check "PostgreSQL and the services on one host"
        (cfg.services.postgresql.enable && cfg.systemd.services ? biblioteca-almacenamiento))
      (check "the migration waits for the passwords"
        (lib.elem "biblioteca-postgresql-passwords.service" (svc cfg "biblioteca-migrate").after))
      (check "failover.toml is root-only" (cfg.environment.etc."biblioteca/failover.toml".mode == "0600"))
    ];
    two-standbys = cfg: common cfg ++ [
      (check "two standbys: ANY 1 of them" (ssn cfg == "ANY 1 (db2, \"db-3\")"))
    ];
    two-standbys-both = cfg: common cfg ++ [
      (check "synchronousCount 2: ANY 2" (ssn cfg == "ANY 2 (db2, \"db-3\")"))
    ];
    vm-primary = cfg: common cfg ++ [
      (check "VM test: pg_hba.conf lists the standby's IPv6 address"
        (lib.elem "host replication replicator 2001:db8:1::3/128 scram-sha-256" (hba cfg)))
    ];
    vm-standby = common;
    quorum-db1 = cfg: common cfg ++ [
      (check "quorum VM test: ANY 1 (db2, db3)" (ssn cfg == "ANY 1 (db2, db3)"))
      (check "quorum VM test: replication from both standbys, both families"
        (lib.length (lib.filter (lib.hasPrefix "host replication replicator") (hba cfg)) == 4))
    ];
    quorum-db3 = common;
    quorum-app = cfg: common cfg ++ [
      (check "quorum VM test: three nodes for the storage manager"
        (lib.length (toml cfg "almacenamiento").database.nodes == 3))
    ];
    vm-app = cfg: common cfg ++ [
      (check "VM test: the storage manager connects by address"
        (lib.all (n: lib.hasPrefix "host=192.168.1." n.conninfo) (toml cfg "almacenamiento").database.nodes))
    ];
    # Settings that must fail an assertion (and nothing else first).
    enable-only = cfg: [
      (check "names the missing CURVE keys" (hasMessage cfg "curve.publicKeys"))
      (check "names the missing owner password and nodes" (hasMessage cfg "ownerPasswordFile"))
      (check "assertions win over evaluation errors" (forced cfg))
    ];
    standby-bare = cfg: [
      (check "names primaryHost" (hasMessage cfg "primaryHost must be set"))
      (check "names replicationPasswordFile" (hasMessage cfg "replicationPasswordFile must be set"))
      (check "names peerAddresses" (hasMessage cfg "peerAddresses must list"))
      (check "assertions win over evaluation errors" (forced cfg))
    ];
    hostname-peer = cfg: [
      (check "a host name in peerAddresses is refused" (hasMessage cfg "not host names: db2"))
      (check "a host name as primaryHost warns" (lib.any (lib.hasInfix "is a name") cfg.warnings))
    ];
    too-many-sync = cfg: [
      (check "synchronousCount above the standbys is refused" (hasMessage cfg "synchronousCount (3)"))
    ];
    agent-db = cfg: common cfg ++ [
      (check "the agent's [auto] table names the etcd members and this node"
        ((toml cfg "failover").auto.etcd == etcdMembers && (toml cfg "failover").auto.node == "db1"
          && (toml cfg "failover").auto.enabled))
      (check "on a database host the agent runs as postgres, hardened"
        ((svc cfg "biblioteca-failover-agent").serviceConfig.User == "postgres"
          && (svc cfg "biblioteca-failover-agent").serviceConfig.PrivateUsers))
      (check "the agent reads failover.toml as a credential"
        (lib.hasInfix "--config %d/failover.toml agent" (svc cfg "biblioteca-failover-agent").serviceConfig.ExecStart))
    ];
    agent-storage = cfg: common cfg ++ [
      (check "beside the storage manager: no node, root for the roles file"
        (!((toml cfg "failover").auto ? node) && (svc cfg "biblioteca-failover-agent").serviceConfig.User == "root"))
    ];
    agent-disponible = cfg: [
      (check "automatic failover with disponible is refused" (hasMessage cfg "refuses replicacion"))
      (check "fewer than three etcd members are refused" (hasMessage cfg "three etcd members"))
    ];
    store-secret = cfg: [
      (check "a password file in the Nix store is refused" (hasMessage cfg "must not be in the Nix store"))
    ];
  };

  configs = {
    primary = [ module (db "primary" { }) ];
    standby = [ module (db "standby" { }) ];
    app = [ module secrets keys (storageNodes kv) { services.biblioteca.enable = true; } ];
    app-plain = [
      module
      secrets
      (storageNodes (h: "postgresql://${h}:5432/library?sslmode=prefer"))
      {
        services.biblioteca = {
          enable = true;
          curve.enable = false;
          settings.almacenamiento.replication = { replicacion = "disponible"; degradar_tras = "5s"; };
        };
      }
    ];
    single-host = [
      module
      secrets
      keys
      (storageNodes kv)
      (db "primary" { clientAddresses = [ "127.0.0.1" "::1" ]; adminAddresses = [ "127.0.0.1" ]; })
      {
        services.biblioteca = {
          enable = true;
          components.failover.enable = true;
          settings.failover.nodes = [
            { name = "db1"; conninfo = kv "10.0.0.1"; }
            { name = "db2"; conninfo = kv "10.0.0.2"; }
          ];
        };
      }
    ];
    app-metrics = [
      module
      secrets
      keys
      (storageNodes kv)
      {
        services.biblioteca = {
          enable = true;
          components.failover.enable = true;
          settings.failover.nodes = [{ name = "db1"; conninfo = kv "10.0.0.1"; }];
          metrics = {
            listenAddress = "0.0.0.0";
            ports.carga = 9556;
            openFirewall = true;
            scrape = { enable = true; host = "10.0.0.3"; };
            textfileDirectory = "/var/lib/node-exporter";
          };
        };
      }
    ];
    app-metrics-off = [ module secrets keys (storageNodes kv) { services.biblioteca = { enable = true; metrics.enable = false; }; } ];
    two-standbys = [ module (db "primary" { synchronousStandbys = [ "db2" "db-3" ]; peerAddresses = [ "10.0.0.2" "10.0.0.4" ]; }) ];
    two-standbys-both = [ module (db "primary" { synchronousStandbys = [ "db2" "db-3" ]; synchronousCount = 2; peerAddresses = [ "10.0.0.2" "10.0.0.4" ]; }) ];
    vm-primary = [ vmTest.nodes.primary ];
    vm-standby = [ vmTest.nodes.standby ];
    vm-app = [ vmTest.nodes.app ];
    enable-only = [ module { services.biblioteca.enable = true; } ];
    standby-bare = [ module { services.biblioteca.postgresql = { enable = true; role = "standby"; }; } ];
    hostname-peer = [ module (db "standby" { peerAddresses = [ "db2" ]; primaryHost = "db1"; }) ];
    too-many-sync = [ module (db "primary" { synchronousStandbys = [ "db2" "db3" ]; synchronousCount = 3; }) ];
    agent-db = [ module secrets keys (storageNodes kv) (db "primary" { }) (agentOn etcdMembers) ];
    agent-storage = [ module secrets keys (storageNodes kv) (agentOn etcdMembers) ];
    agent-disponible = [
      module
      secrets
      keys
      (storageNodes kv)
      (agentOn [ "http://10.0.0.1:2379" ])
      { services.biblioteca.settings.almacenamiento.replication.replicacion = "disponible"; }
    ];
    store-secret = [ module secrets (storageNodes kv) { services.biblioteca = { enable = true; curve.enable = false; databasePasswordFile = lib.mkForce "${builtins.storeDir}/x-db"; }; } ];
  };
  quorumEval = evalWith (addressesOf quorumTest);
  quorumConfigs = {
    quorum-db1 = [ quorumTest.nodes.db1 ];
    quorum-db3 = [ quorumTest.nodes.db3 ];
    quorum-app = [ quorumTest.nodes.app ];
  };
in
if part == "pkgs" then pkgs
else if scenario == null then lib.attrNames scenarios
else if quorumConfigs ? ${scenario} then scenarios.${scenario} (quorumEval quorumConfigs.${scenario})
else scenarios.${scenario} (eval configs.${scenario})
