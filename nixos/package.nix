# biblioteca binaries, built per workspace member (`cargo build -p`).
# The default set is the services a deployment runs; flake.nix builds the
# demo and benchmark tools as a second package from the same file. libzmq
# comes from pkg-config (zmq-sys 0.11 links the system library).
{ lib
, rustPlatform
, pkg-config
, zeromq
, postgresql
, makeWrapper
, dejavu_fonts
, pname ? "biblioteca"
  # Workspace members whose binaries are installed.
, members ? [
    "biblioteca-storage" # biblioteca-almacenamiento
    "biblioteca-load-manager" # biblioteca-carga
    "biblioteca-actor"
    "biblioteca-failover"
    "biblioteca-runtime" # biblioteca-claves
    "biblioteca-client" # biblioteca-solicitante
  ]
, mainProgram ? "biblioteca-almacenamiento"
  # The tools package: where the demo finds the service binaries it starts.
, servicesBin ? null
}:

let
  cargo = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  inherit pname;
  inherit (cargo.workspace.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../clippy.toml
      ../src
      # The root package's [[test]] targets must exist for cargo to load the
      # workspace, though the build does not run them.
      ../tests
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = lib.concatMap (m: [ "-p" m ]) members;

  nativeBuildInputs = [
    pkg-config
    makeWrapper
  ];
  buildInputs = [ zeromq ];

  # The test suite starts PostgreSQL clusters and binds ZeroMQ ports, which the
  # build sandbox does not allow reliably; checks.<system>.failover (a NixOS
  # VM test) exercises the binaries instead.
  doCheck = false;

  # The demo and the failover tool run initdb/pg_ctl/pg_basebackup: point
  # them at a PostgreSQL of the same major version as the servers.
  postInstall = ''
    for bin in biblioteca-demo biblioteca-failover; do
      if [ -e "$out/bin/$bin" ]; then
        wrapProgram "$out/bin/$bin" \
          --prefix PATH : ${lib.makeBinPath [ postgresql ]} \
          --set-default PG_BIN ${lib.getBin postgresql}/bin
      fi
    done
    # Chart labels (`carga --grafico`) need a TrueType font at run time.
    if [ -e "$out/bin/biblioteca-solicitante" ]; then
      wrapProgram "$out/bin/biblioteca-solicitante" \
        --set-default BIBLIOTECA_FONT ${dejavu_fonts}/share/fonts/truetype/DejaVuSans.ttf
    fi
  '' + lib.optionalString (servicesBin != null) ''
    # The demo starts the services' binaries from the services package.
    wrapProgram "$out/bin/biblioteca-demo" --add-flags "--bin-dir ${servicesBin}"
  '';

  meta = {
    description = "biblioteca: library loans over ZeroMQ with a storage manager over replicated PostgreSQL";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    inherit mainProgram;
  };
}
