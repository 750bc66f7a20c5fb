//! The history file: one JSON object per line, either a request
//! ([`Entry`]) or a fault mark (`{"mark": "cut app->db1", "t": ms}`) that a
//! fault script appended to its marks file while the workload ran.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::resolve::Resolution;
use crate::workload::Entry;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    pub mark: String,
    pub t: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Mark(Mark),
    Request(Box<Entry>),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Json {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads JSON lines of `T`; blank lines are skipped.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, RecordError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| RecordError::Json {
                path: path.display().to_string(),
                line: n + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

/// Writes one JSON line per item.
pub fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> Result<(), RecordError> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    for item in items {
        let line = serde_json::to_string(item).map_err(|source| RecordError::Json {
            path: path.display().to_string(),
            line: 0,
            source,
        })?;
        writeln!(file, "{line}").map_err(io(path))?;
    }
    file.flush().map_err(io(path))
}

/// The requests and marks of a history, merged in time order.
pub fn merge(history: Vec<Entry>, marks: Vec<Mark>) -> Vec<Record> {
    let mut all: Vec<(u64, Record)> = history
        .into_iter()
        .map(|e| (e.start, Record::Request(Box::new(e))))
        .chain(marks.into_iter().map(|m| (m.t, Record::Mark(m))))
        .collect();
    all.sort_by_key(|(t, _)| *t);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Splits a history file's records into requests and marks.
pub fn split(records: Vec<Record>) -> (Vec<Entry>, Vec<Mark>) {
    let (mut entries, mut marks) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            Record::Request(e) => entries.push(*e),
            Record::Mark(m) => marks.push(m),
        }
    }
    (entries, marks)
}

/// Resolutions are stored one per line, in the history's request order.
pub type Resolutions = Vec<Resolution>;
