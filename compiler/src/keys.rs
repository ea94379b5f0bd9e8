//! Signing keys for `sparsec`: new keypairs (`sparsec keygen`, the seed from the operating
//! system through `getrandom`), key files written private (mode 0600, folders 0700), and the
//! per-user key that `sparsec` signs with by default, created on first use in
//! `runtime::signature::user_key_dir()` (`$SPARSEC_KEY_DIR`, else `$XDG_CONFIG_HOME/sparsec`,
//! else `~/.config/sparsec`).
//!
//! The key file format, signing and verification belong to `runtime::signature`; this module
//! must not touch model.bin bytes.

use runtime::signature::{self, SigningKey};
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Key(#[from] runtime::KeyError),
    #[error("cannot get random bytes for a new key from the operating system: {0}")]
    Random(String),
    #[error(
        "{} already exists: sparsec never overwrites a key (remove it first, or pick another --out)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no folder for the per-user signing key: set SPARSEC_KEY_DIR (or XDG_CONFIG_HOME or HOME), \
         or pass --sign KEY or --no-sign"
    )]
    NoKeyDir,
}

/// A new signing key from 32 bytes of operating-system randomness.
pub fn generate() -> Result<SigningKey, KeysError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeysError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// The public key file next to a secret key file: `PATH.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Writes `key` to `secret` (mode 0600) and its public half to `secret.pub`; never overwrites
/// either. The parent folder is created (mode 0700) if missing.
pub fn write_keypair(secret: &Path, key: &SigningKey) -> Result<(), KeysError> {
    let public = public_path(secret);
    for p in [secret, public.as_path()] {
        if p.exists() {
            return Err(KeysError::Exists(p.to_path_buf()));
        }
    }
    if let Some(dir) = secret.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    write_new(secret, &signature::secret_key_text(key), 0o600)?;
    write_new(
        &public,
        &signature::public_key_text(&key.verifying_key()),
        0o644,
    )
}

/// The per-user signing key and whether it was just created (its secret file's path too).
pub fn user_signing_key() -> Result<(SigningKey, bool, PathBuf), KeysError> {
    let dir = signature::user_key_dir().ok_or(KeysError::NoKeyDir)?;
    let secret = dir.join(signature::USER_SECRET_KEY_FILE);
    if secret.exists() {
        return Ok((signature::read_secret_key(&secret)?, false, secret));
    }
    let key = generate()?;
    write_keypair(&secret, &key)?;
    Ok((key, true, secret))
}

/// The path `sparsec keygen` writes by default: the per-user key.
pub fn user_secret_path() -> Result<PathBuf, KeysError> {
    signature::user_key_dir()
        .map(|d| d.join(signature::USER_SECRET_KEY_FILE))
        .ok_or(KeysError::NoKeyDir)
}

fn create_private_dir(dir: &Path) -> Result<(), KeysError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| KeysError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeysError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let fail = |source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypairs_are_private_distinct_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("sparsec-keys-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let secret = dir.join("sub").join("k");
        let a = generate().expect("random");
        let b = generate().expect("random");
        assert_ne!(a.to_bytes(), b.to_bytes());
        write_keypair(&secret, &a).expect("write");
        let read = signature::read_secret_key(&secret).expect("read back");
        assert_eq!(read.to_bytes(), a.to_bytes());
        let public = signature::read_public_key(&public_path(&secret)).expect("public");
        assert_eq!(public, a.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&secret)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            write_keypair(&secret, &b),
            Err(KeysError::Exists(p)) if p == secret
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
