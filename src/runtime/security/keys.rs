//! CURVE key pairs and public keys, and the files they live in.
//!
//! A key pair named `NAME` is two files: `NAME.key` holds the public key alone
//! (40 Z85 characters and a newline, safe to copy anywhere and to paste into
//! an allow-list), `NAME.key_secret` holds both keys as `public-key = "..."`
//! and `secret-key = "..."` lines and is created with mode 0600. A secret key
//! file that others can read is refused. Secret bytes never reach a log line:
//! [`KeyPair`]'s `Debug` prints only the public key.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SecurityError;

/// Length of a Z85-encoded CURVE key.
pub const Z85_LEN: usize = 40;
/// Suffix of a public key file.
pub const PUBLIC_SUFFIX: &str = "key";
/// Suffix of a secret key file.
pub const SECRET_SUFFIX: &str = "key_secret";

/// A CURVE public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Decodes a 40-character Z85 key.
    pub fn from_z85(text: &str) -> Option<PublicKey> {
        let text = text.trim();
        if text.len() != Z85_LEN {
            return None;
        }
        let bytes = zmq::z85_decode(text).ok()?;
        bytes.try_into().ok().map(PublicKey)
    }

    pub fn z85(&self) -> String {
        zmq::z85_encode(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.z85())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.z85())
    }
}

/// A CURVE key pair; the secret half is never printed.
#[derive(Clone)]
pub struct KeyPair {
    pub public: PublicKey,
    secret: [u8; 32],
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({}, secret hidden)", self.public)
    }
}

impl KeyPair {
    /// A fresh key pair from libzmq (needs a libzmq built with CURVE).
    pub fn generate() -> Result<KeyPair, SecurityError> {
        if zmq::has("curve") != Some(true) {
            return Err(SecurityError::NoCurve);
        }
        let pair = zmq::CurveKeyPair::new()?;
        Ok(KeyPair {
            public: PublicKey(pair.public_key),
            secret: pair.secret_key,
        })
    }

    /// The secret key in binary, for `ZMQ_CURVE_SECRETKEY`.
    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }

    /// Writes `DIR/NAME.key` and `DIR/NAME.key_secret` (mode 0600). Existing
    /// files are replaced only with `overwrite`. Returns both paths.
    pub fn save(
        &self,
        dir: &Path,
        name: &str,
        overwrite: bool,
    ) -> Result<(PathBuf, PathBuf), SecurityError> {
        let (public, secret) = paths(dir, name);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let secret_text = format!(
            "# biblioteca CURVE key pair {name}: keep this file private\n\
             public-key = \"{}\"\nsecret-key = \"{}\"\n",
            self.public,
            zmq::z85_encode(&self.secret).unwrap_or_default()
        );
        write_new(&secret, secret_text.as_bytes(), 0o600, overwrite)?;
        write_new(
            &public,
            format!("{}\n", self.public).as_bytes(),
            0o644,
            overwrite,
        )?;
        Ok((public, secret))
    }

    /// Reads a secret key file; refuses one that group or others can read.
    pub fn load(path: &Path) -> Result<KeyPair, SecurityError> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecurityError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let bad = |what: &str| SecurityError::BadKey {
            origin: path.display().to_string(),
            reason: what.to_string(),
        };
        let public = field(&text, "public-key")
            .and_then(PublicKey::from_z85)
            .ok_or_else(|| bad("no valid public-key line"))?;
        let secret = field(&text, "secret-key")
            .and_then(PublicKey::from_z85)
            .ok_or_else(|| bad("no valid secret-key line"))?;
        Ok(KeyPair {
            public,
            secret: secret.0,
        })
    }
}

/// `DIR/NAME.key` and `DIR/NAME.key_secret`.
pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.{PUBLIC_SUFFIX}")),
        dir.join(format!("{name}.{SECRET_SUFFIX}")),
    )
}

/// The value of a `name = "value"` line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// Reads a public key file: the bare Z85 key, or a `public-key = "..."` line
/// (so a secret key file names its own public key too).
pub fn load_public(path: &Path) -> Result<PublicKey, SecurityError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .map(str::trim)
        .find_map(PublicKey::from_z85)
        .or_else(|| field(&text, "public-key").and_then(PublicKey::from_z85))
        .ok_or_else(|| SecurityError::BadKey {
            origin: path.display().to_string(),
            reason: "no Z85 public key in it".into(),
        })
}

/// A configured key reference: an existing file or directory is read (a
/// directory contributes every `*.key` file in it), anything else must be
/// a Z85 key itself.
pub fn resolve(entry: &str) -> Result<Vec<PublicKey>, SecurityError> {
    let path = Path::new(entry);
    if path.is_dir() {
        let mut keys = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == PUBLIC_SUFFIX))
            .collect();
        files.sort();
        for f in files {
            keys.push(load_public(&f)?);
        }
        return Ok(keys);
    }
    if path.exists() {
        return load_public(path).map(|k| vec![k]);
    }
    PublicKey::from_z85(entry)
        .map(|k| vec![k])
        .ok_or_else(|| SecurityError::BadKey {
            origin: entry.to_string(),
            reason: "neither an existing key file or directory nor a 40-character Z85 key".into(),
        })
}

/// Exactly one key from `entry` (a server's key).
pub fn resolve_one(entry: &str) -> Result<PublicKey, SecurityError> {
    let keys = resolve(entry)?;
    match keys.as_slice() {
        [one] => Ok(*one),
        _ => Err(SecurityError::BadKey {
            origin: entry.to_string(),
            reason: format!("names {} keys, expected exactly one", keys.len()),
        }),
    }
}

pub(crate) fn write_new(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), SecurityError> {
    if overwrite {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(path)(e)),
            _ => {}
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    // The umask may have narrowed the mode; a public key should stay readable.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecurityError + '_ {
    move |source| SecurityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_through_their_files() {
        let dir = std::env::temp_dir().join(format!("bib-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pair = KeyPair::generate().unwrap();
        let (public, secret) = pair.save(&dir, "carga", false).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = KeyPair::load(&secret).unwrap();
        assert_eq!(back.public, pair.public);
        assert_eq!(back.secret_bytes(), pair.secret_bytes());
        assert_eq!(load_public(&public).unwrap(), pair.public);
        assert_eq!(load_public(&secret).unwrap(), pair.public);
        assert_eq!(resolve(&pair.public.z85()).unwrap(), vec![pair.public]);
        assert_eq!(resolve(dir.to_str().unwrap()).unwrap(), vec![pair.public]);
        assert!(
            pair.save(&dir, "carga", false).is_err(),
            "no silent overwrite"
        );
        let shown = format!("{pair:?}");
        let secret_z85 = zmq::z85_encode(pair.secret_bytes()).unwrap();
        assert!(!shown.contains(&secret_z85));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyPair::load(&secret),
            Err(SecurityError::Exposed { .. })
        ));
        assert!(resolve("no-such-key").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
