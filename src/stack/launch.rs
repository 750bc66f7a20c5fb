//! Starting the service binaries as child processes, for the demo and the tests.
//!
//! A [`Service`] owns one child: its TOML config written to a file in the run
//! directory, stdout/stderr appended to a log file there, and its own
//! `NOTIFY_SOCKET` — a Unix datagram socket drained by a thread that keeps
//! every sd-notify message, so [`Service::start`] can wait for `READY=1` (and
//! fail early with the log tail when the child exits first) and tests can
//! check what a service announced. Dropping a [`Service`] kills the child.
//!
//! [`find_binary`] locates `biblioteca-*` next to the running executable (or
//! in `target/debug` when the executable is a test in `target/debug/deps`);
//! [`free_port`] picks loopback ports below 32768 nobody is listening on.

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "binary {name} not found (looked in {looked}); build the workspace first: \
         cargo build --release --workspace"
    )]
    NotFound { name: String, looked: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {name} ({binary}): {source}")]
    Spawn {
        name: String,
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before READY=1; log {log}:\n{tail}")]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} sent no READY=1 within {secs} s; log {log}:\n{tail}")]
    NotReady {
        name: String,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("signal {signal} to {name}: {source}")]
    Signal {
        name: String,
        signal: &'static str,
        source: nix::Error,
    },
    #[error("no free port on 127.0.0.1 below 32768")]
    NoFreePort,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds executable `name` in `dir`, or else next to the current executable
/// and in its parent directory (test binaries live in `target/debug/deps`).
pub fn find_binary(name: &str, dir: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let mut candidates = Vec::new();
    match dir {
        Some(d) => candidates.push(d.to_path_buf()),
        None => {
            if let Ok(exe) = std::env::current_exe() {
                if let Some(d) = exe.parent() {
                    candidates.push(d.to_path_buf());
                    if let Some(p) = d.parent() {
                        candidates.push(p.to_path_buf());
                    }
                }
            }
        }
    }
    for d in &candidates {
        let path = d.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(LaunchError::NotFound {
        name: name.to_string(),
        looked: candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);
const PORT_LOW: u32 = 20_000;
const PORT_SPAN: u32 = 12_000;

/// A port on 127.0.0.1 that nothing listens on now, in 20000..32000; each
/// process starts from its own offset (from its pid) so parallel test
/// processes rarely try the same ports.
pub fn free_port() -> Result<u16, LaunchError> {
    let base = (std::process::id().wrapping_mul(7919)) % PORT_SPAN;
    for _ in 0..PORT_SPAN {
        let step = PORT_CURSOR.fetch_add(1, Ordering::SeqCst);
        let port = PORT_LOW + (base + step) % PORT_SPAN;
        let port = u16::try_from(port).map_err(|_| LaunchError::NoFreePort)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LaunchError::NoFreePort)
}

/// Whether something already listens on 127.0.0.1:`port` (or it is otherwise unbindable).
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
        || std::net::TcpListener::bind(("0.0.0.0", port)).is_err()
}

/// How to run one service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Short unique name: the config, log and notify socket are named after it.
    pub name: String,
    pub binary: PathBuf,
    /// Written to `<run_dir>/<name>.toml` and passed as `--config`.
    pub config_toml: String,
    /// Extra arguments after `--config PATH`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    pub run_dir: PathBuf,
    pub ready_timeout: Duration,
    /// After SIGTERM, how long `stop` waits before SIGKILL.
    pub stop_timeout: Duration,
}

impl ServiceSpec {
    pub fn new(
        name: impl Into<String>,
        binary: impl Into<PathBuf>,
        config_toml: impl Into<String>,
        run_dir: impl Into<PathBuf>,
    ) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            binary: binary.into(),
            config_toml: config_toml.into(),
            args: Vec::new(),
            env: Vec::new(),
            run_dir: run_dir.into(),
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.toml", self.name))
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.log", self.name))
    }
}

/// sd-notify messages received so far, with a condvar to wait for more.
#[derive(Debug, Default)]
struct Inbox {
    messages: Mutex<Vec<String>>,
    arrived: Condvar,
}

/// A running service child process.
#[derive(Debug)]
pub struct Service {
    spec: ServiceSpec,
    child: Option<Child>,
    inbox: Arc<Inbox>,
    notify_path: PathBuf,
    reader_stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

static NOTIFY_SEQ: AtomicU32 = AtomicU32::new(0);

impl Service {
    /// Writes the config, binds the notify socket, spawns the child and waits
    /// for `READY=1`.
    pub fn start(spec: ServiceSpec) -> Result<Service, LaunchError> {
        std::fs::create_dir_all(&spec.run_dir).map_err(io_err(&spec.run_dir))?;
        let config = spec.config_path();
        std::fs::write(&config, &spec.config_toml).map_err(io_err(&config))?;
        let notify_path = notify_socket_path(&spec);
        let _ = std::fs::remove_file(&notify_path);
        let sock = UnixDatagram::bind(&notify_path).map_err(io_err(&notify_path))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(io_err(&notify_path))?;
        let inbox = Arc::new(Inbox::default());
        let reader_stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (inbox, stop) = (inbox.clone(), reader_stop.clone());
            std::thread::Builder::new()
                .name(format!("notify-{}", spec.name))
                .spawn(move || drain_notify(sock, &inbox, &stop))
                .map_err(io_err(&notify_path))?
        };
        let mut svc = Service {
            spec,
            child: None,
            inbox,
            notify_path,
            reader_stop,
            reader: Some(reader),
        };
        svc.spawn_and_wait()?;
        Ok(svc)
    }

    fn spawn_and_wait(&mut self) -> Result<(), LaunchError> {
        let seen = self.messages().len();
        let log_path = self.spec.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;
        let mut cmd = Command::new(&self.spec.binary);
        cmd.arg("--config")
            .arg(self.spec.config_path())
            .args(&self.spec.args)
            .env("NOTIFY_SOCKET", &self.notify_path)
            // The log is a file: no terminal colour codes in it; and an
            // `anyhow` backtrace (RUST_BACKTRACE=1 inherited) would push the
            // error itself out of the tail shown when a start fails.
            .env("NO_COLOR", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            name: self.spec.name.clone(),
            binary: self.spec.binary.clone(),
            source,
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + self.spec.ready_timeout;
        loop {
            if self.messages()[seen..]
                .iter()
                .any(|m| has_line(m, "READY=1"))
            {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                return Err(LaunchError::Exited {
                    name: self.spec.name.clone(),
                    status: status.to_string(),
                    log: log_path,
                    tail: self.log_tail(30),
                });
            }
            if Instant::now() >= deadline {
                self.kill_child();
                return Err(LaunchError::NotReady {
                    name: self.spec.name.clone(),
                    secs: self.spec.ready_timeout.as_secs(),
                    log: log_path,
                    tail: self.log_tail(30),
                });
            }
            self.wait_inbox(Duration::from_millis(50));
        }
    }

    fn wait_inbox(&self, d: Duration) {
        if let Ok(guard) = self.inbox.messages.lock() {
            let _ = self.inbox.arrived.wait_timeout(guard, d);
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    pub fn log_path(&self) -> PathBuf {
        self.spec.log_path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        biblioteca_cluster::node::tail(&self.spec.log_path(), lines)
    }

    /// The child's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every sd-notify datagram received so far, in order (all restarts).
    pub fn messages(&self) -> Vec<String> {
        self.inbox
            .messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Waits until a datagram with index >= `since` satisfies `pred`.
    pub fn wait_message<F>(&self, since: usize, timeout: Duration, pred: F) -> Option<String>
    where
        F: Fn(&str) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let msgs = self.messages();
            if let Some(m) = msgs.iter().skip(since).find(|m| pred(m)) {
                return Some(m.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.wait_inbox((deadline - now).min(Duration::from_millis(100)));
        }
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    fn signal(&self, sig: Signal, signal: &'static str) -> Result<(), LaunchError> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let pid = i32::try_from(pid).map_err(|_| LaunchError::Signal {
            name: self.spec.name.clone(),
            signal,
            source: nix::Error::ESRCH,
        })?;
        kill(Pid::from_raw(pid), sig).map_err(|source| LaunchError::Signal {
            name: self.spec.name.clone(),
            signal,
            source,
        })
    }

    pub fn sighup(&self) -> Result<(), LaunchError> {
        self.signal(Signal::SIGHUP, "SIGHUP")
    }

    pub fn sigstop(&self) -> Result<(), LaunchError> {
        self.signal(Signal::SIGSTOP, "SIGSTOP")
    }

    pub fn sigcont(&self) -> Result<(), LaunchError> {
        self.signal(Signal::SIGCONT, "SIGCONT")
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<Option<ExitStatus>, LaunchError> {
        if self.try_wait().is_none() {
            self.signal(Signal::SIGKILL, "SIGKILL")?;
        }
        Ok(self.child.take().and_then(|mut c| c.wait().ok()))
    }

    /// SIGTERM, then waits up to `stop_timeout` before SIGKILL; returns how it
    /// ended (`None` when it was not running).
    pub fn stop(&mut self) -> Result<Option<ExitStatus>, LaunchError> {
        if self.child.is_none() {
            return Ok(None);
        }
        if self.try_wait().is_none() {
            // A stopped process cannot act on SIGTERM.
            let _ = self.sigcont();
            self.signal(Signal::SIGTERM, "SIGTERM")?;
            let deadline = Instant::now() + self.spec.stop_timeout;
            while self.try_wait().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.try_wait().is_some() {
            Ok(self.child.take().and_then(|mut c| c.wait().ok()))
        } else {
            self.kill9()
        }
    }

    /// Starts the child again (after `stop`/`kill9`, or stopping it first)
    /// and waits for a new `READY=1`.
    pub fn restart(&mut self) -> Result<(), LaunchError> {
        self.stop()?;
        self.spawn_and_wait()
    }

    /// Rewrites the config file (e.g. before `sighup` or `restart`).
    pub fn set_config(&mut self, toml: impl Into<String>) -> Result<(), LaunchError> {
        self.spec.config_toml = toml.into();
        let path = self.spec.config_path();
        std::fs::write(&path, &self.spec.config_toml).map_err(io_err(&path))
    }

    fn kill_child(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.sigcont();
        self.kill_child();
        self.reader_stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let _ = std::fs::remove_file(&self.notify_path);
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l.trim() == line)
}

/// `<run_dir>/<name>.notify`, or a short path in the temp dir when that would
/// not fit in a socket address (108 bytes).
fn notify_socket_path(spec: &ServiceSpec) -> PathBuf {
    let p = spec.run_dir.join(format!("{}.notify", spec.name));
    if p.as_os_str().len() < 100 {
        return p;
    }
    let seq = NOTIFY_SEQ.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("bib-{}-{seq}.notify", std::process::id()))
}

fn drain_notify(sock: UnixDatagram, inbox: &Inbox, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Ok(mut m) = inbox.messages.lock() {
                    m.push(text);
                }
                inbox.arrived.notify_all();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Runs `biblioteca-failover --config CONFIG ARGS` to its end (warnings
/// only) and returns whether it succeeded with its stdout and stderr
/// together: how the suites drive the failover tool, as an operator would.
pub fn run_failover(config: &Path, args: &[&str]) -> Result<(bool, String), LaunchError> {
    let binary = find_binary("biblioteca-failover", None)?;
    let out = Command::new(&binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|source| LaunchError::Spawn {
            name: "biblioteca-failover".into(),
            binary,
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in service: a shell script (it ignores `--config PATH`).
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    const NOTIFY: &str = r#"exec /usr/bin/python3 -c '
import os, socket, sys, time
print("started", file=sys.stderr, flush=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\nSTATUS=up", os.environ["NOTIFY_SOCKET"])
time.sleep(60)
'"#;

    fn run_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bib-launch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn waits_for_ready_keeps_messages_stops_and_restarts() {
        if !Path::new("/usr/bin/python3").exists() {
            eprintln!("skipped: no /usr/bin/python3");
            return;
        }
        let dir = run_dir("ok");
        let bin = script(&dir, "svc", NOTIFY);
        let mut svc = Service::start(ServiceSpec::new("svc", bin, "x = 1\n", &dir)).unwrap();
        assert!(svc.messages()[0].contains("READY=1"));
        assert_eq!(
            std::fs::read_to_string(dir.join("svc.toml")).unwrap(),
            "x = 1\n"
        );
        assert!(svc.is_running() && svc.pid().is_some());
        let status = svc.stop().unwrap().unwrap();
        assert!(!status.success());
        assert!(!svc.is_running());
        svc.restart().unwrap();
        assert_eq!(svc.messages().len(), 2);
        assert!(svc.log_tail(5).contains("started\nstarted"));
        svc.kill9().unwrap();
        assert!(svc.pid().is_none());
        drop(svc);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn early_exit_and_silence_are_errors_with_the_log() {
        let dir = run_dir("bad");
        let bin = script(&dir, "dies", "echo boom >&2; exit 3");
        let err = Service::start(ServiceSpec::new("dies", bin, "", &dir)).unwrap_err();
        assert!(
            matches!(&err, LaunchError::Exited { tail, .. } if tail.contains("boom")),
            "{err}"
        );
        let bin = script(&dir, "mute", "exec sleep 30");
        let mut spec = ServiceSpec::new("mute", bin, "", &dir);
        spec.ready_timeout = Duration::from_millis(500);
        let err = Service::start(spec).unwrap_err();
        assert!(matches!(err, LaunchError::NotReady { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn free_ports_are_below_32768_and_bindable() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!((20_000..32_000).contains(&p));
            assert!(!port_in_use(p));
        }
        assert!(find_binary("no-such-binary", None).is_err());
    }
}
