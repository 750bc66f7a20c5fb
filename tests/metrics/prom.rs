//! A real Prometheus (Debian's 2.42) in a temporary directory on a free
//! port, scraping every second and evaluating docs/monitoring/alerts.yml,
//! plus the HTTP helpers the suite asks the services and Prometheus with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `GET` (or `method`) `url`: status and body; `None` when nothing answers.
pub fn http(method: &str, url: &str) -> Option<(u16, String)> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    match agent.request(method, url).call() {
        Ok(r) => {
            let status = r.status();
            Some((status, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(status, r)) => Some((status, r.into_string().unwrap_or_default())),
        Err(_) => None,
    }
}

/// The status of `path` on `127.0.0.1:port`.
pub fn status(port: u16, path: &str) -> u16 {
    http("GET", &format!("http://127.0.0.1:{port}{path}"))
        .map(|(s, _)| s)
        .unwrap_or(0)
}

/// Installs Debian's prometheus (with promtool) when missing, as root.
pub fn ensure_installed() {
    if which("prometheus") && which("promtool") {
        return;
    }
    let ok = Command::new("sh")
        .arg("-c")
        .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok && which("promtool"),
        "cannot install Debian's prometheus (run as root, or .ci/setup-debian)"
    );
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `promtool ARGS` with `stdin` fed in: (success, output).
pub fn promtool(args: &[&str], stdin: Option<&str>, dir: &Path) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring")
}

pub struct Prometheus {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `targets` (`job` → ports on 127.0.0.1) every second.
    pub fn start(dir: &Path, targets: &[(&str, u16)]) -> Prometheus {
        ensure_installed();
        std::fs::create_dir_all(dir).unwrap();
        let rules = dir.join("alerts.yml");
        std::fs::copy(monitoring_dir().join("alerts.yml"), &rules).unwrap();
        let mut scrape = String::new();
        for (job, port) in targets {
            scrape.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n{scrape}",
            rules.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = biblioteca_stack::launch::free_port().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(port, "/-/ready") != 200 {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query`: the whole answer (`status` is `success` or `error`).
    pub fn query_raw(&self, expr: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body = match ureq::get(&url).query("query", expr).call() {
            Ok(r) => r.into_string().unwrap_or_default(),
            Err(ureq::Error::Status(_, r)) => r.into_string().unwrap_or_default(),
            Err(e) => panic!("prometheus does not answer: {e}"),
        };
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// The vector's samples as (labels, value).
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let v = self.query_raw(expr);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The single value of `expr`, when it has exactly one sample.
    pub fn scalar(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// Polls `expr` until `check` holds on its single value.
    pub fn wait_for(&self, expr: &str, timeout: Duration, check: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.scalar(expr);
            if let Some(v) = v.filter(|v| check(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: still {v:?} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
