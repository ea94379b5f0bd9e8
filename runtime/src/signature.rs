//! Signed model.bin: the ed25519 signature over a file's sealed bytes (`ed25519-dalek`), the
//! trust decision's input ([`check`]: unsigned, signed by a trusted key, by another key, or
//! not verifying), signing ([`sign`]), key files and the per-user key's folder.
//!
//! The trailer's byte layout belongs to `format` ([`crate::format::Header`]); this module only
//! reads what `Header::parse` found and never interprets the manifest: [`check`] runs before
//! anything beyond the header is read. What a signature permits (running the file's native
//! code) is decided by the loader (`dispatch`), not here.
//!
//! Key files are one line of text: `sparsec-ed25519-public <64 hex digits>` (a `.pub` file, the
//! 32-byte public key) or `sparsec-ed25519-secret <64 hex digits>` (the 32-byte secret seed;
//! written with mode 0600 by `sparsec keygen`).

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

use crate::error::{KeyError, LoadError};
use crate::format::{self, Header, ModelFile};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// The environment variable naming the folder of the per-user signing key (before
/// `$XDG_CONFIG_HOME/sparsec` and `~/.config/sparsec`).
pub const KEY_DIR_ENV: &str = "SPARSEC_KEY_DIR";
/// The per-user key's file names in [`user_key_dir`]: the secret key and `<this>.pub`.
pub const USER_SECRET_KEY_FILE: &str = "signing.key";
pub const USER_PUBLIC_KEY_FILE: &str = "signing.key.pub";

const PUBLIC_TAG: &str = "sparsec-ed25519-public";
const SECRET_TAG: &str = "sparsec-ed25519-secret";

/// What a file's signature says, before any trust decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureState {
    /// No signature trailer.
    Unsigned,
    /// A valid signature by a key the caller trusts.
    Trusted { fingerprint: String },
    /// A valid signature by a key the caller does not trust.
    Untrusted { fingerprint: String },
    /// A signature that does not verify with the key in the trailer (the file was changed
    /// after signing, or the trailer was), or a trailer key that is not a valid point.
    Invalid { fingerprint: String },
}

impl SignatureState {
    /// Whether the file is signed by a key the caller trusts.
    pub fn is_trusted(&self) -> bool {
        matches!(self, SignatureState::Trusted { .. })
    }

    /// The fingerprint of the trailer's key, if the file has a trailer.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            SignatureState::Unsigned => None,
            SignatureState::Trusted { fingerprint }
            | SignatureState::Untrusted { fingerprint }
            | SignatureState::Invalid { fingerprint } => Some(fingerprint),
        }
    }
}

impl fmt::Display for SignatureState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureState::Unsigned => write!(f, "unsigned"),
            SignatureState::Trusted { fingerprint } => {
                write!(f, "signed by trusted key {fingerprint}")
            }
            SignatureState::Untrusted { fingerprint } => {
                write!(f, "signed by key {fingerprint}, which is not trusted")
            }
            SignatureState::Invalid { fingerprint } => write!(
                f,
                "signature by key {fingerprint} does not verify (changed after signing)"
            ),
        }
    }
}

/// A key's fingerprint: `ed25519:` and the first 16 bytes of the SHA-256 of the public key, in
/// hex. For people to compare keys; trust compares whole keys.
pub fn fingerprint(key: &[u8; format::PUBLIC_KEY_BYTES]) -> String {
    let digest = Sha256::digest(key);
    format!("ed25519:{}", hex(&digest[..16]))
}

/// Checks `bytes`' header and, if it declares a signature trailer, verifies the signature
/// (`verify_strict`) over the sealed bytes with the trailer's key, then looks that key up in
/// `trusted`. Reads nothing beyond the header but the raw bytes the signature covers. Errors
/// are the header's own ([`Header::parse`]); a signature that does not verify is
/// [`SignatureState::Invalid`], not an error (the caller decides).
pub fn check(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<SignatureState, LoadError> {
    let header = Header::parse(bytes)?;
    let Some(trailer) = header.trailer else {
        return Ok(SignatureState::Unsigned);
    };
    let fingerprint = fingerprint(&trailer.key);
    let sealed = bytes.get(..header.sealed_len).unwrap_or_default();
    let verified = VerifyingKey::from_bytes(&trailer.key).ok().filter(|key| {
        key.verify_strict(sealed, &Signature::from_bytes(&trailer.signature))
            .is_ok()
    });
    Ok(match verified {
        None => SignatureState::Invalid { fingerprint },
        Some(key) if trusted.contains(&key) => SignatureState::Trusted { fingerprint },
        Some(_) => SignatureState::Untrusted { fingerprint },
    })
}

/// Signs a valid model.bin with `key`: the sealed bytes (an existing signature is replaced)
/// get the trailer length in their header, a new checksum and a signature trailer. The result
/// is checked with [`ModelFile::parse`] and [`check`].
pub fn sign(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, LoadError> {
    ModelFile::parse(bytes)?;
    let header = Header::parse(bytes)?;
    let mut out = bytes.get(..header.sealed_len).unwrap_or_default().to_vec();
    format::prepare_signed(&mut out);
    let signature = key.sign(&out);
    format::append_trailer(
        &mut out,
        key.verifying_key().as_bytes(),
        &signature.to_bytes(),
    );
    ModelFile::parse(&out)?;
    let state = check(&out, &[key.verifying_key()])?;
    if !state.is_trusted() {
        return Err(LoadError::Trailer(format!(
            "the signature just written does not verify: {state}"
        )));
    }
    Ok(out)
}

/// The text of a public key file (one line).
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_TAG} {}\n", hex(key.as_bytes()))
}

/// The text of a secret key file (one line). Keep it private: mode 0600.
pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{SECRET_TAG} {}\n", hex(key.as_bytes()))
}

/// Parses a public key file's text.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = parse_key_line(text, PUBLIC_TAG)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// Parses a secret key file's text.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    parse_key_line(text, SECRET_TAG).map(|seed| SigningKey::from_bytes(&seed))
}

/// Reads a public key file (`sparsec keygen`'s `.pub`).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = read_key_file(path)?;
    parse_public_key(&text).map_err(|reason| KeyError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads a secret key file (`sparsec keygen`'s key).
pub fn read_secret_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read_key_file(path)?;
    parse_secret_key(&text).map_err(|reason| KeyError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The folder of the per-user signing key: `$SPARSEC_KEY_DIR`, else
/// `$XDG_CONFIG_HOME/sparsec`, else `$HOME/.config/sparsec` (`None` without any of them).
pub fn user_key_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var(KEY_DIR_ENV) {
        return Some(PathBuf::from(dir));
    }
    if let Some(config) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(config).join("sparsec"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".config").join("sparsec"))
}

/// The per-user public key (what `sparsec` signs with by default), if it exists: the key
/// `sparsec run`, `sparsec bench` and the examples trust besides the ones they are given.
pub fn user_public_key() -> Result<Option<VerifyingKey>, KeyError> {
    let Some(path) = user_key_dir().map(|d| d.join(USER_PUBLIC_KEY_FILE)) else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    read_public_key(&path).map(Some)
}

fn parse_key_line(text: &str, tag: &str) -> Result<[u8; 32], String> {
    let mut words = text.split_whitespace();
    let (Some(found), Some(digits), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("expected one line `{tag} <64 hex digits>`"));
    };
    if found != tag {
        return Err(format!("starts with `{found}`, expected `{tag}`"));
    }
    let mut out = [0u8; 32];
    if digits.len() != 64 || !digits.is_ascii() {
        return Err(format!(
            "expected 64 hex digits after `{tag}`, found {} characters",
            digits.chars().count()
        ));
    }
    for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(format!("`{digits}` is not hexadecimal"));
        };
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn key_files_round_trip_and_reject_bad_text() {
        let k = key(7);
        let public = public_key_text(&k.verifying_key());
        assert_eq!(parse_public_key(&public), Ok(k.verifying_key()));
        let secret = secret_key_text(&k);
        assert_eq!(
            parse_secret_key(&secret).map(|s| s.to_bytes()),
            Ok(k.to_bytes())
        );
        assert!(
            parse_public_key(&secret).is_err(),
            "a secret is not a public key"
        );
        assert!(parse_secret_key("sparsec-ed25519-secret 12").is_err());
        assert!(parse_secret_key(&format!("{SECRET_TAG} {}", "zz".repeat(32))).is_err());
        assert!(parse_public_key("").is_err());
        assert!(parse_secret_key(&format!("{secret} extra")).is_err());
    }

    #[test]
    fn signed_files_verify_and_any_changed_byte_does_not() {
        let unsigned = &crate::format::tests::sample_file().0;
        assert_eq!(check(unsigned, &[]).ok(), Some(SignatureState::Unsigned));
        let k = key(3);
        let signed = sign(unsigned, &k).expect("the sample is valid");
        assert_eq!(
            signed.len(),
            unsigned.len() + format::SIGNATURE_TRAILER_BYTES
        );
        let file = ModelFile::parse(&signed).expect("a signed file parses");
        assert_eq!(
            file.manifest,
            ModelFile::parse(unsigned).expect("valid").manifest
        );
        assert_eq!(
            file.signature.map(|t| t.key),
            Some(*k.verifying_key().as_bytes())
        );
        let fp = fingerprint(k.verifying_key().as_bytes());
        let trusted = [k.verifying_key()];
        assert_eq!(
            check(&signed, &trusted).ok(),
            Some(SignatureState::Trusted {
                fingerprint: fp.clone()
            })
        );
        assert_eq!(
            check(&signed, &[key(4).verifying_key()]).ok(),
            Some(SignatureState::Untrusted { fingerprint: fp })
        );
        // Re-signing replaces the signature; signing an unsigned file twice gives one file.
        let again = sign(&signed, &key(4)).expect("re-sign");
        assert_eq!(again.len(), signed.len());
        assert_eq!(again[..64 + 8], signed[..64 + 8]);
        // Every byte, flipped (checksum recomputed, as an attacker would): an error, or a
        // signature that is not trusted; never trusted.
        for i in 0..signed.len() {
            let mut b = signed.clone();
            b[i] ^= 0x10;
            crate::format::seal(&mut b);
            if b == signed {
                continue; // a checksum byte, restored by the reseal
            }
            if let Ok(state) = check(&b, &trusted) {
                assert!(!state.is_trusted(), "byte {i} flipped: {state}");
            }
        }
    }

    #[test]
    fn fingerprints_differ_between_keys() {
        let a = fingerprint(key(1).verifying_key().as_bytes());
        let b = fingerprint(key(2).verifying_key().as_bytes());
        assert!(a.starts_with("ed25519:") && a.len() == 8 + 32);
        assert_ne!(a, b);
    }
}
