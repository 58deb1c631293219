//! Content-addressed artifacts: the digest, and the manifest that describes a layer.
//!
//! A layer is either a tar archive (its artifact is the archive's bytes) or a manifest: the list
//! of entries of a directory tree, with each file named by the digest of its contents. A
//! manifest's own digest is the digest of its rkyv encoding, which is deterministic (entries are
//! kept sorted by path), so equal trees always get equal digests.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(compare(PartialEq), derive(Debug, PartialEq, Eq, Hash, Clone, Copy))]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Incremental hashing, for streams.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// What an entry of a layer is.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum EntryKind {
    /// A regular file with these contents and permission bits.
    File {
        digest: Digest,
        size: u64,
        mode: u32,
    },
    Directory {
        mode: u32,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// One entry: `path` is absolute within the layer ("/usr/bin/true"), normalized, UTF-8 or not.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
}

/// A layer described entry by entry, sorted by path, one entry per path.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Builds a manifest from entries in any order; a later entry for a path replaces an earlier.
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut by_path = std::collections::BTreeMap::new();
        for entry in entries {
            by_path.insert(entry.path.clone(), entry);
        }
        Self { entries: by_path.into_values().collect() }
    }

    /// The manifest's identity: the digest of its encoding.
    pub fn digest(&self) -> Digest {
        let bytes =
            rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("INVARIANT: a manifest always encodes");
        Digest::of(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let d = Digest::of(b"hello");
        assert_eq!(d.hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(Digest::from_hex(&d.hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
    }

    #[test]
    fn manifest_digest_ignores_insertion_order() {
        let file = |path: &str| Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File { digest: Digest::of(path.as_bytes()), size: 1, mode: 0o644 },
        };
        let a = Manifest::from_entries([file("/a"), file("/b")]);
        let b = Manifest::from_entries([file("/b"), file("/a")]);
        assert_eq!(a.digest(), b.digest());
        let c = Manifest::from_entries([file("/a")]);
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn incremental_hash_matches_one_shot() {
        let mut h = Hasher::default();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }
}
