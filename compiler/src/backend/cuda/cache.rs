//! The on-disk cache of NVRTC output: one file per (source, NVRTC version, architecture,
//! options), named by the SHA-256 of the four, under the user's cache folder
//! (`$SPARSEC_CACHE_DIR`, else `$XDG_CACHE_HOME/sparsec`, else `~/.cache/sparsec`; then
//! `nvrtc/`). An entry is `MAGIC`, the payload's length (u64 LE), its SHA-256, then the
//! payload: a torn or altered file fails the check and is treated as a miss (and rewritten).
//! Entries are written to a temporary file in the same folder and renamed into place, so
//! concurrent compiles never see half an entry: the last rename wins, and both wrote the same
//! bytes. A cache that cannot be read or written never fails a compile: it is only slower.
//!
//! The cache holds the compiler's own output, read back only by the compiler; model.bin
//! loading never reads it. Must not call NVRTC (`nvrtc.rs` does) or generate source.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The first 8 bytes of every entry (the format of the entries, not of model.bin).
pub const MAGIC: [u8; 8] = *b"SPNVRC1\0";
const HEADER: usize = 8 + 8 + 32;

/// A cache folder.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: PathBuf,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Vec<u8>),
    /// No entry (or it could not be read).
    Miss,
    /// An entry that fails its length or hash check: to be rebuilt.
    Corrupt,
}

impl KernelCache {
    /// The cache in `dir` (created on the first write).
    pub fn at(dir: impl Into<PathBuf>) -> KernelCache {
        KernelCache { dir: dir.into() }
    }

    /// The user's cache: `$SPARSEC_CACHE_DIR`, else `$XDG_CACHE_HOME/sparsec`, else
    /// `$HOME/.cache/sparsec`, each with `nvrtc/` appended; `None` when none is set.
    pub fn user() -> Option<KernelCache> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let root = var("SPARSEC_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| Path::new(&d).join("sparsec")))
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/sparsec")))?;
        Some(KernelCache::at(root.join("nvrtc")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of one compilation: every input that changes NVRTC's output.
    pub fn key(source: &str, nvrtc_version: &str, arch: &str, options: &[String]) -> String {
        let mut h = Sha256::new();
        for part in [source, nvrtc_version, arch]
            .into_iter()
            .chain(options.iter().map(String::as_str))
        {
            // Length-prefixed, so no two lists of parts hash the same bytes.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.bin"))
    }

    /// The entry for `key`, checked.
    pub fn get(&self, key: &str) -> Lookup {
        let Ok(bytes) = std::fs::read(self.path(key)) else {
            return Lookup::Miss;
        };
        match decode(&bytes) {
            Some(payload) => Lookup::Hit(payload.to_vec()),
            None => Lookup::Corrupt,
        }
    }

    /// Stores `payload` under `key`: written to a temporary file, then renamed into place.
    pub fn put(&self, key: &str, payload: &[u8]) -> std::io::Result<()> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".{key}.{}.{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode(payload))?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path(key))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of an entry whose magic, length and hash all check out.
fn decode(bytes: &[u8]) -> Option<&[u8]> {
    let (header, payload) = bytes.split_at_checked(HEADER)?;
    let len = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
    (header.get(..8)? == MAGIC
        && u64::try_from(payload.len()).ok() == Some(len)
        && Sha256::digest(payload).as_slice() == header.get(16..)?)
    .then_some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_cache(name: &str) -> KernelCache {
        let dir =
            std::env::temp_dir().join(format!("sparsec-cache-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        KernelCache::at(dir)
    }

    #[test]
    fn miss_then_hit() -> std::io::Result<()> {
        let c = temp_cache("hit");
        let key = KernelCache::key("src", "12.9", "sm_90", &["--fmad=true".into()]);
        assert_eq!(c.get(&key), Lookup::Miss);
        c.put(&key, b"cubin bytes")?;
        assert_eq!(c.get(&key), Lookup::Hit(b"cubin bytes".to_vec()));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(c.dir())?.collect::<Result<_, _>>()?;
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(c.dir())
    }

    #[test]
    fn every_input_changes_the_key() {
        let o = |s: &str| vec![s.to_string()];
        let base = KernelCache::key("src", "12.9", "sm_90", &o("-a"));
        for other in [
            KernelCache::key("src2", "12.9", "sm_90", &o("-a")),
            KernelCache::key("src", "12.8", "sm_90", &o("-a")),
            KernelCache::key("src", "12.9", "sm_80", &o("-a")),
            KernelCache::key("src", "12.9", "sm_90", &o("-b")),
            KernelCache::key("src", "12.9", "sm_90", &[]),
            KernelCache::key("sr", "c12.9", "sm_90", &o("-a")),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, KernelCache::key("src", "12.9", "sm_90", &o("-a")));
    }

    #[test]
    fn corrupt_entries_are_detected_and_rewritten() -> std::io::Result<()> {
        let c = temp_cache("corrupt");
        let key = KernelCache::key("src", "12.9", "ptx", &[]);
        c.put(&key, b"some ptx text")?;
        let path = c.path(&key);
        let good = std::fs::read(&path)?;
        let mut flipped = good.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        for bad in [
            flipped,
            good[..good.len() - 1].to_vec(),
            good[..10].to_vec(),
            bad_magic,
            [good.clone(), b"!".to_vec()].concat(),
        ] {
            std::fs::write(&path, &bad)?;
            assert_eq!(c.get(&key), Lookup::Corrupt);
        }
        c.put(&key, b"some ptx text")?;
        assert_eq!(c.get(&key), Lookup::Hit(b"some ptx text".to_vec()));
        std::fs::remove_dir_all(c.dir())
    }

    #[test]
    fn concurrent_writers_leave_one_whole_entry() -> std::io::Result<()> {
        let c = temp_cache("race");
        let key = KernelCache::key("src", "12.9", "sm_80", &[]);
        let payload = vec![7u8; 1 << 20];
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let _ = c.put(&key, &payload);
                        // A reader never sees a torn entry.
                        assert!(matches!(c.get(&key), Lookup::Hit(_) | Lookup::Miss));
                    }
                });
            }
        });
        assert_eq!(c.get(&key), Lookup::Hit(payload));
        std::fs::remove_dir_all(c.dir())
    }
}
