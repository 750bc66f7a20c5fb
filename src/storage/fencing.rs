//! Fencing by timeline: the newest PostgreSQL timeline the storage manager
//! has ever seen, persisted in `state_dir/timeline` so a restart remembers it.
//! A primary on an older timeline is a former primary that came back after a
//! failover; writing to it would fork history, so it never takes writes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::StorageError;

/// The newest timeline ever seen; a node on an older one never takes writes.
#[derive(Debug)]
pub struct Fencing {
    newest: AtomicU32,
    file: Option<PathBuf>,
}

impl Fencing {
    /// Loads the newest timeline from `state_dir/timeline` when configured.
    pub fn load(state_dir: Option<&PathBuf>) -> Result<Fencing, StorageError> {
        let file = state_dir.map(|d| d.join("timeline"));
        let mut newest = 0;
        if let Some(path) = &file {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| StorageError::State {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
            }
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    newest = text.trim().parse().map_err(|_| StorageError::State {
                        path: path.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "expected a timeline number",
                        ),
                    })?;
                    tracing::info!(timeline = newest, file = %path.display(), "newest timeline seen so far");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StorageError::State {
                        path: path.clone(),
                        source: e,
                    })
                }
            }
        }
        Ok(Fencing {
            newest: AtomicU32::new(newest),
            file,
        })
    }

    pub fn newest(&self) -> u32 {
        self.newest.load(Ordering::SeqCst)
    }

    /// Records a timeline; persists it when it is the newest so far.
    pub fn observe(&self, timeline: u32) {
        let before = self.newest.fetch_max(timeline, Ordering::SeqCst);
        if timeline <= before {
            return;
        }
        tracing::info!(timeline, previous = before, "newer timeline seen");
        if let Some(path) = &self.file {
            let tmp = path.with_extension("tmp");
            let written = std::fs::write(&tmp, format!("{timeline}\n"))
                .and_then(|_| std::fs::rename(&tmp, path));
            if let Err(e) = written {
                tracing::error!(file = %path.display(), error = %e, "cannot persist the newest timeline");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_persists_the_newest_timeline() {
        let dir = std::env::temp_dir().join(format!("bib-fencing-{}", std::process::id()));
        let f = Fencing::load(Some(&dir)).unwrap();
        f.observe(3);
        f.observe(2);
        assert_eq!(f.newest(), 3);
        let again = Fencing::load(Some(&dir)).unwrap();
        assert_eq!(again.newest(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
