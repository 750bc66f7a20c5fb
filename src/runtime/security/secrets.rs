//! Generated passwords and the files that hold secrets.
//!
//! A secret file is created with mode 0600 before anything is written to it,
//! so it is never readable by others, not even for a moment. Passwords are
//! hex (safe in conninfo strings, pgpass lines and shell commands).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::keys::io;
use super::SecurityError;

/// A random password of `bytes` bytes from the kernel's generator, in hex.
pub fn password(bytes: usize) -> Result<String, SecurityError> {
    let path = Path::new("/dev/urandom");
    let mut buf = vec![0u8; bytes];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io(path))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path` (replacing it) with mode 0600.
pub fn write_private(path: &Path, text: &str) -> Result<(), SecurityError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    super::keys::write_new(path, text.as_bytes(), 0o600, true)
}

/// Whether others than the owner and group may read `path`.
pub fn world_readable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o004 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_fresh_and_files_private() {
        let a = password(24).unwrap();
        assert_eq!(a.len(), 48);
        assert_ne!(a, password(24).unwrap());
        let path = std::env::temp_dir().join(format!("bib-secret-{}", std::process::id()));
        write_private(&path, &a).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!world_readable(&path));
        let _ = std::fs::remove_file(&path);
    }
}
