//! The chaos suite's per-fault table: each fault's window runs from its start to the next
//! fault's start (the fault plus the healthy traffic after it); requests are
//! counted in the window they ended in, so a request caught in flight by a
//! fault counts for that fault.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use biblioteca_protocol::Operacion;

use crate::resolve::Resolution;
use crate::workload::{Entry, Outcome};

/// One injected fault, as the driver did it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub name: String,
    /// Milliseconds since the epoch, as [`crate::now_ms`].
    pub start: u64,
    /// When the process was back (restart returned READY, or SIGCONT sent).
    pub end: u64,
    /// Recovery is measured on this operation only (a killed actor does not
    /// stop the other operations); `None`: any write.
    pub affects: Option<Operacion>,
}

#[derive(Debug, Default, Clone)]
pub struct Row {
    pub name: String,
    pub ops: usize,
    pub ok: usize,
    pub business: usize,
    pub retried: usize,
    pub unknown_applied: usize,
    pub unknown_not_applied: usize,
    pub unresolved: usize,
    pub transient_replies: u32,
    pub timeouts: u32,
    pub recover: Option<Duration>,
    pub outage: Option<Duration>,
}

impl Row {
    fn add(&mut self, e: &Entry, res: &Resolution) {
        self.ops += 1;
        if e.ok() {
            self.ok += 1;
        } else if e.definitive() {
            self.business += 1;
        }
        self.retried += usize::from(e.tries > 1);
        self.transient_replies += e.transient;
        self.timeouts += e.timeouts;
        match res {
            Resolution::Applied(_) => self.unknown_applied += 1,
            Resolution::NotApplied => self.unknown_not_applied += 1,
            Resolution::Unresolved(_) => self.unresolved += 1,
            Resolution::Read if !e.definitive() => self.unknown_not_applied += 1,
            _ => {}
        }
    }

    fn failed(&self) -> usize {
        self.unknown_applied + self.unknown_not_applied + self.unresolved
    }
}

/// Rows: the healthy start, each fault, and the total.
pub fn table(faults: &[Fault], history: &[Entry], resolved: &[Resolution]) -> Vec<Row> {
    let mut rows = vec![Row {
        name: "healthy start".into(),
        ..Row::default()
    }];
    rows.extend(faults.iter().map(|f| Row {
        name: f.name.clone(),
        ..Row::default()
    }));
    let mut total = Row {
        name: "total".into(),
        ..Row::default()
    };
    for (e, res) in history.iter().zip(resolved) {
        let w = faults.iter().take_while(|f| f.start <= e.end).count();
        rows[w].add(e, res);
        total.add(e, res);
    }
    for (i, f) in faults.iter().enumerate() {
        // Any definitive reply proves the path works again: a business
        // refusal is as committed and truthful as a success.
        let first_ok = history
            .iter()
            .filter(|e| e.start >= f.end && e.definitive())
            .filter(|e| f.affects.map_or(e.op.is_write(), |op| e.op == op))
            .map(|e| e.end)
            .min();
        let since = |from: u64| move |t: u64| Duration::from_millis(t.saturating_sub(from));
        rows[i + 1].recover = first_ok.map(since(f.end));
        // From the fault to the first definitively answered request that began after it.
        rows[i + 1].outage = first_ok.map(since(f.start));
    }
    rows.push(total);
    rows
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{} ms", d.as_millis()))
}

pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<30} {:>6} {:>6} {:>5} {:>7} {:>6} {:>13} {:>6} {:>6} {:>10} {:>10}",
        "window (fault + healthy after)",
        "ops",
        "acked",
        "(biz)",
        "retried",
        "failed",
        "(applied/not)",
        "transi",
        "tmout",
        "recover",
        "outage"
    );
    for r in rows {
        let failed = if r.unresolved > 0 {
            format!("{}!", r.failed())
        } else {
            r.failed().to_string()
        };
        let (recover, outage) = if r.name == "healthy start" || r.name == "total" {
            ("-".to_string(), "-".to_string())
        } else {
            (ms(r.recover), ms(r.outage))
        };
        let _ = writeln!(
            s,
            "{:<30} {:>6} {:>6} {:>5} {:>7} {:>6} {:>13} {:>6} {:>6} {:>10} {:>10}",
            r.name,
            r.ops,
            r.ok + r.business,
            r.business,
            r.retried,
            failed,
            format!("{}/{}", r.unknown_applied, r.unknown_not_applied),
            r.transient_replies,
            r.timeouts,
            recover,
            outage
        );
    }
    s.push_str(
        "acked: definitive reply (success or business error, `biz`); retried: needed more than one try \
         (same id); failed: no definitive reply within the budget, resolved by lookup as applied / \
         not applied; transi: transient replies; tmout: tries without reply; recover: from the \
         process being back to the end of the first definitively answered request started after that; \
         outage: from the fault to that same moment.\n",
    );
    s
}

/// How the requests without a definitive answer ended their last try.
pub fn unknown_causes(history: &[Entry]) -> String {
    let mut causes: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in history {
        if let Outcome::Unknown { last } = &e.outcome {
            *causes.entry(last.as_str()).or_default() += 1;
        }
    }
    let list: Vec<String> = causes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    format!(
        "last try of the failed requests: {}\n",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    )
}

/// Writes to the real stderr: libtest captures `println!`/`eprintln!` of
/// passing tests, and the table is the point of the run.
pub fn emit(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}
