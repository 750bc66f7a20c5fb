//! node_exporter's textfile collector, for tools that run briefly
//! (`biblioteca-failover`): the metrics are written to `DIR/NAME.prom`
//! through a temporary file in the same directory and a rename, so the
//! collector never reads half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `text` (the Prometheus text format) to `dir/name.prom` atomically.
pub fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let target = dir.join(format!("{name}.prom"));
    // node_exporter skips files not ending in .prom, so the temporary one
    // is never read.
    let tmp = dir.join(format!(".{name}.prom.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = super::write(&dir, "x", "a 1\n").unwrap();
        super::write(&dir, "x", "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
