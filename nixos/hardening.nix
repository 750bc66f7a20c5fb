# The sandbox every biblioteca service runs in, as systemd `serviceConfig`.
# Plain data (no nixpkgs needed) so tests/static/check.sh can evaluate it with
# `nix-instantiate --eval --json` and compare it, key by key, with the
# hardening block of the unit files in units/: the two must not drift.
{
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";
  NoNewPrivileges = true;
  UMask = "0077";
  PrivateUsers = true;
  PrivateTmp = true;
  PrivateDevices = true;
  DevicePolicy = "closed";
  ProtectSystem = "strict";
  ProtectHome = true;
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  ProtectProc = "invisible";
  ProcSubset = "pid";
  RestrictAddressFamilies = [
    "AF_UNIX"
    "AF_INET"
    "AF_INET6"
  ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  RemoveIPC = true;
  KeyringMode = "private";
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "~@privileged @resources"
    # libzmq's I/O threads call pthread_setschedparam() (the inherited
    # policy, never real-time: RestrictRealtime still holds) and abort when it
    # fails; the services set SCHED_BATCH at start (`scheduling` setting).
    "sched_setscheduler"
  ];
  SystemCallErrorNumber = "EPERM";
}
