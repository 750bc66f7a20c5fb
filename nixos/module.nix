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
#
# The module is split by role, as nixpkgs splits its large modules:
# modules/options/*.nix declare the options, modules/services.nix the
# services and their TOML files, modules/database.nix the PostgreSQL node,
# modules/lib.nix the names they share, modules/metrics.nix the metrics
# endpoints' firewall ports and the opt-in Prometheus scrape job,
# modules/failover-agent.nix the automatic failover agent.
{
  imports = [
    ./modules/failover-agent.nix
    ./modules/database.nix
    ./modules/services.nix
    ./modules/metrics.nix
    ./modules/options/postgresql.nix
    ./modules/options/common.nix
    ./modules/options/metrics.nix
  ];
}
