# The biblioteca binaries. libzmq comes from pkg-config (zmq-sys 0.11 links
# the system library rather than vendoring it).
{ lib
, rustPlatform
, pkg-config
, zeromq
, postgresql
, makeWrapper
, dejavu_fonts
}:

let
  cargo = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = cargo.package.name;
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
    wrapProgram "$out/bin/biblioteca-solicitante" \
      --set-default BIBLIOTECA_FONT ${dejavu_fonts}/share/fonts/truetype/DejaVuSans.ttf
  '';

  meta = {
    description = cargo.package.description;
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "biblioteca-demo";
  };
}
