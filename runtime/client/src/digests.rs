//! File digests, cached by (path, device, inode, size, mtime) so an unchanged file is hashed
//! once, ever.
//!
//! The cache is one binary file, read whole at start and rewritten (to a temporary file, then
//! renamed) when entries were added. Runs going on at once may each rewrite it; the last one
//! wins and the others' new entries are simply hashed again next time. A damaged file is
//! ignored entry by entry.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use maelstrom_wire::artifact::{Digest, Hasher};

const MAGIC: &[u8; 8] = b"MDIGEST1";

/// Entries kept; beyond this the oldest-looked-up are not written back.
const ENTRIES_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
        }
    }
}

#[derive(Debug)]
pub struct DigestCache {
    file: Option<PathBuf>,
    entries: HashMap<PathBuf, (Stamp, Digest)>,
    dirty: bool,
}

impl DigestCache {
    /// An empty cache that is never saved.
    pub fn in_memory() -> Self {
        Self { file: None, entries: HashMap::new(), dirty: false }
    }

    /// Loads the cache kept in `file` (which may not exist yet).
    pub fn open(file: &Path) -> Self {
        let mut cache = Self { file: Some(file.to_owned()), entries: HashMap::new(), dirty: false };
        if let Ok(bytes) = fs::read(file) {
            cache.load(&bytes);
        }
        cache
    }

    fn load(&mut self, bytes: &[u8]) {
        let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else { return };
        let mut cursor = Cursor(rest);
        while let Some((path, stamp, digest)) = cursor.record() {
            self.entries.insert(path, (stamp, digest));
        }
    }

    /// The digest of the file at `path` (following symlinks), and its metadata.
    pub fn digest(&mut self, path: &Path) -> io::Result<(Digest, fs::Metadata)> {
        let metadata = fs::metadata(path)?;
        if !metadata.is_file() {
            // Opening a FIFO would wait for a writer; a socket or device has no contents.
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let stamp = Stamp::of(&metadata);
        if let Some((cached, digest)) = self.entries.get(path)
            && *cached == stamp
        {
            return Ok((*digest, metadata));
        }
        let digest = hash_file(path)?;
        self.entries.insert(path.to_owned(), (stamp, digest));
        self.dirty = true;
        Ok((digest, metadata))
    }

    /// Writes the cache back if anything was added.
    pub fn save(&mut self) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty {
            return Ok(());
        }
        let mut bytes = MAGIC.to_vec();
        for (path, (stamp, digest)) in self.entries.iter().take(ENTRIES_MAX) {
            for n in [stamp.dev, stamp.ino, stamp.size, stamp.mtime as u64, stamp.mtime_nsec as u64] {
                bytes.extend_from_slice(&n.to_le_bytes());
            }
            bytes.extend_from_slice(&digest.0);
            let path = path.as_os_str().as_bytes();
            bytes.extend_from_slice(&(path.len() as u64).to_le_bytes());
            bytes.extend_from_slice(path);
        }
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, file)?;
        self.dirty = false;
        Ok(())
    }
}

impl Drop for DigestCache {
    fn drop(&mut self) {
        let _ = self.save();
    }
}

/// Reads records of the stored cache; stops at the first short or damaged one.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn record(&mut self) -> Option<(PathBuf, Stamp, Digest)> {
        let (dev, ino, size, mtime, mtime_nsec) =
            (self.u64()?, self.u64()?, self.u64()?, self.u64()?, self.u64()?);
        let digest = Digest(self.take(32)?.try_into().ok()?);
        let len = usize::try_from(self.u64()?).ok()?;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(self.take(len)?));
        let stamp = Stamp { dev, ino, size, mtime: mtime as i64, mtime_nsec: mtime_nsec as i64 };
        Some((path, stamp, digest))
    }
}

/// Hashes a file's contents.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_hashed_again_even_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"one").unwrap();
        let store = dir.path().join("digests");
        let mut cache = DigestCache::open(&store);
        let (first, _) = cache.digest(&file).unwrap();
        assert_eq!(first, Digest::of(b"one"));
        drop(cache);

        let mut reopened = DigestCache::open(&store);
        assert!(reopened.entries.contains_key(&file), "entries survive a restart");
        // Forge the cached digest: a hit returns it without reading the file.
        let forged = Digest::of(b"forged");
        reopened.entries.get_mut(&file).unwrap().1 = forged;
        assert_eq!(reopened.digest(&file).unwrap().0, forged);

        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::write(&file, b"two").unwrap();
        assert_eq!(reopened.digest(&file).unwrap().0, Digest::of(b"two"), "a changed file is hashed again");
    }

    #[test]
    fn a_damaged_store_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("digests");
        fs::write(&store, b"MDIGEST1\x01\x02garbage").unwrap();
        let cache = DigestCache::open(&store);
        assert!(cache.entries.is_empty());
    }
}
