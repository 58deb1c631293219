//! The layer cache: one extracted tree per artifact, kept across runs, shared by runs going on
//! at once, bounded in size, least recently used first out.
//!
//! ```text
//! <root>/CACHEDIR.TAG
//! <root>/v1/lock            held exclusively while evicting
//! <root>/v1/trees/<key>/    a finished tree, never changed once renamed into place
//! <root>/v1/meta/<key>      its size in bytes; mtime = last use; shared-locked while in use
//! <root>/v1/tmp/            trees being built (renamed into trees/ when done)
//! <root>/v1/trash/          trees being deleted
//! ```
//!
//! A root worker's jobs run as the host's nobody (see `maelstrom_container::jobs_host_id`), so
//! in a cache root owns, its trees are given to nobody, as an ordinary worker's are its own: a
//! writable root is then the job's to change, as it is under any other worker. `v1/` is then
//! private to root, so no process of the host's nobody reaches the trees except through a
//! job's read-only layers. (A root worker using a cache on a path another user may change, as
//! under `sudo -E`, leaves its trees as root's: it changes no ownership where another user
//! could race it.)
//!
//! A process that uses a tree holds a shared lock on its meta file for as long as it may use it;
//! an evictor takes the exclusive lock without waiting and skips what it cannot lock, so no
//! tree in use anywhere is ever deleted. Two processes building the same tree both build, and
//! the second rename loses harmlessly.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use maelstrom_wire::artifact::Digest;

const LAYOUT: &str = "v1";
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by maelstrom.\n";

/// Something went wrong with the cache itself (not with one layer's contents).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache at {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("build layer {key}: {message}")]
    Build { key: String, message: String },
}

fn io_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io { path: path.to_owned(), what, source }
}

/// A tree this process uses, kept from eviction until the cache is dropped.
#[derive(Debug)]
struct Held {
    tree: PathBuf,
    _lock: File,
}

#[derive(Debug)]
pub struct LayerCache {
    dir: PathBuf,
    size_max: u64,
    held: Mutex<HashMap<Digest, Held>>,
    /// Bytes added by this process since the last eviction.
    added: Mutex<u64>,
    /// The host id trees belong to when it is not this process's own: a root worker's jobs'.
    owner: Option<u32>,
}

impl LayerCache {
    /// Opens (creating if needed) the cache under `root`, bounded by `size_max` bytes.
    pub fn open(root: &Path, size_max: u64) -> Result<Self, CacheError> {
        // Trees become layers of job roots, which must be absolute paths.
        let root = &std::path::absolute(root).map_err(io_error(root, "make the path absolute"))?;
        let dir = root.join(LAYOUT);
        for sub in ["trees", "meta", "tmp", "trash"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_error(&path, "create a directory"))?;
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fs::write(&tag, CACHEDIR_TAG).map_err(io_error(&tag, "write the cache tag"))?;
        }
        // Only in a cache that is root's alone: root walks and changes the trees by path, and no
        // one else may move anything on that path under it.
        let owner = maelstrom_container::jobs_host_id().filter(|_| roots_alone(&dir));
        if owner.is_some() {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_error(&dir, "make the cache private"))?;
        }
        // Eviction runs once this process has added an eighth of the bound, not at every open:
        // opening must stay cheap for short runs.
        Ok(Self { dir, size_max, held: Mutex::default(), added: Mutex::new(0), owner })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What one tree may take: nine tenths of the space left on the cache's filesystem, so a
    /// layer bigger than the cache's target size builds (it is evicted once nothing uses it),
    /// but none fills the disk.
    pub fn layer_budget(&self) -> crate::layer::Budget {
        let free = maelstrom_container::available_bytes(&self.dir).unwrap_or(self.size_max);
        crate::layer::Budget::within(free / 10 * 9)
    }

    /// The tree for `key` if some process has built it; it then stays usable until released.
    pub fn get(&self, key: &Digest) -> Result<Option<PathBuf>, CacheError> {
        if let Some(tree) = self.held_tree(key) {
            return Ok(Some(tree));
        }
        let name = key.hex();
        let tree = self.dir.join("trees").join(&name);
        if !tree.is_dir() {
            return Ok(None);
        }
        let meta = lock_meta(&self.dir.join("meta").join(&name))?;
        // Evicted between the look and the lock?
        if !tree.is_dir() {
            return Ok(None);
        }
        self.give_built(&tree)?;
        Ok(Some(self.hold(key, tree, meta)))
    }

    /// The tree for `key`, built with `build(staging_dir)` (which returns the bytes it wrote) if
    /// no process has built it yet. The tree stays usable until released or this cache is
    /// dropped. Builds of different keys may run at once on several threads.
    pub fn get_or_build(
        &self,
        key: &Digest,
        build: impl FnOnce(&Path) -> Result<u64, String>,
    ) -> Result<PathBuf, CacheError> {
        if let Some(tree) = self.held_tree(key) {
            return Ok(tree);
        }
        let name = key.hex();
        let tree = self.dir.join("trees").join(&name);
        let meta_path = self.dir.join("meta").join(&name);
        let mut meta = lock_meta(&meta_path)?;
        if !tree.is_dir() {
            let staging = self.staging_dir()?;
            let size = match build(&staging).and_then(|size| self.give(&staging).map(|()| size)) {
                Ok(size) => size,
                Err(message) => {
                    let _ = fs::remove_dir_all(&staging);
                    return Err(CacheError::Build { key: name, message });
                }
            };
            match fs::rename(&staging, &tree) {
                Ok(()) => {
                    *self.added.lock().unwrap_or_else(|p| p.into_inner()) += size;
                }
                // Another builder finished the same tree first; theirs is as good as ours.
                Err(_) if tree.is_dir() => {
                    let _ = fs::remove_dir_all(&staging);
                }
                Err(e) => {
                    return Err(CacheError::Io {
                        path: tree,
                        what: "move a built tree into place",
                        source: e,
                    });
                }
            }
            meta.set_len(0).map_err(io_error(&meta_path, "write the size"))?;
            meta.write_all(size.to_string().as_bytes()).map_err(io_error(&meta_path, "write the size"))?;
        } else {
            self.give_built(&tree)?;
        }
        let tree = self.hold(key, tree, meta);
        if self.over_budget() {
            self.evict()?;
        }
        Ok(tree)
    }

    /// Lets the tree for `key` be evicted again (by any process) once no one else holds it.
    pub fn release(&self, key: &Digest) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    fn held_tree(&self, key: &Digest) -> Option<PathBuf> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(key).map(|h| h.tree.clone())
    }

    /// Marks the tree used now and keeps its lock.
    fn hold(&self, key: &Digest, tree: PathBuf, meta: File) -> PathBuf {
        let _ = meta.set_modified(SystemTime::now());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(*key).or_insert(Held { tree, _lock: meta }).tree.clone()
    }

    /// Gives the tree being built at `dir` to [`LayerCache::owner`], if the trees have one.
    fn give(&self, dir: &Path) -> Result<(), String> {
        match self.owner {
            Some(id) => give_tree(dir, id).map_err(|e| format!("give the layer to the jobs' user: {e}")),
            None => Ok(()),
        }
    }

    /// Gives a finished tree to [`LayerCache::owner`] if an earlier version left it as root's:
    /// done once (its top directory goes last, so an owned top means an owned tree), and
    /// idempotent if two processes do it at once.
    fn give_built(&self, tree: &Path) -> Result<(), CacheError> {
        let Some(id) = self.owner else { return Ok(()) };
        if fs::symlink_metadata(tree).is_ok_and(|m| m.uid() != 0) {
            return Ok(());
        }
        give_tree(tree, id).map_err(io_error(tree, "give a tree to the jobs' user"))
    }

    fn over_budget(&self) -> bool {
        *self.added.lock().unwrap_or_else(|p| p.into_inner()) > self.size_max / 8
    }

    fn staging_dir(&self) -> Result<PathBuf, CacheError> {
        let tmp = self.dir.join("tmp");
        for attempt in 0..100u32 {
            let nanos =
                SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let path = tmp.join(format!("{}-{nanos:x}-{attempt}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CacheError::Io { path, what: "create a staging directory", source: e }),
            }
        }
        Err(CacheError::Io {
            path: tmp,
            what: "create a staging directory",
            source: io::Error::other("no free name after 100 tries"),
        })
    }

    /// Deletes least-recently-used trees no process holds until the cache fits its bound.
    pub fn evict(&self) -> Result<(), CacheError> {
        let lock_path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path, "open the eviction lock"))?;
        lock.lock().map_err(io_error(&lock_path, "take the eviction lock"))?;
        *self.added.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        let meta_dir = self.dir.join("meta");
        let mut entries = Vec::new();
        let mut total = 0u64;
        for entry in fs::read_dir(&meta_dir).map_err(io_error(&meta_dir, "list the cache"))?.flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            let mut size = String::new();
            let _ = File::open(entry.path()).and_then(|mut f| f.read_to_string(&mut size));
            let size = size.trim().parse::<u64>().unwrap_or(0);
            total += size;
            entries.push((metadata.mtime(), metadata.mtime_nsec(), size, entry.path()));
        }
        entries.sort();
        for (_, _, size, meta_path) in entries {
            if total <= self.size_max {
                break;
            }
            let Ok(meta) = File::options().read(true).write(true).open(&meta_path) else { continue };
            if meta.try_lock().is_err() {
                continue;
            }
            let Some(name) = meta_path.file_name() else { continue };
            let tree = self.dir.join("trees").join(name);
            let trash = self.dir.join("trash").join(name);
            if fs::rename(&tree, &trash).is_ok() || !tree.exists() {
                let _ = fs::remove_file(&meta_path);
                total = total.saturating_sub(size);
            }
            drop(meta);
            let _ = fs::remove_dir_all(&trash);
        }
        Ok(())
    }
}

/// Whether only root may change `dir` or the way to it: it and every directory above it are
/// root's, and none is writable by others, unless sticky (as /tmp is: no one may move there
/// what is not theirs).
fn roots_alone(dir: &Path) -> bool {
    let Ok(dir) = fs::canonicalize(dir) else { return false };
    dir.ancestors().all(|d| {
        fs::metadata(d).is_ok_and(|m| m.uid() == 0 && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0))
    })
}

/// Makes `id` the owner and group of `dir` and of everything below it (symlinks themselves, not
/// what they point to), `dir` itself last. Walked by path: it lies in a directory only root may
/// change (see [`LayerCache::open`]).
fn give_tree(dir: &Path, id: u32) -> io::Result<()> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if fs::symlink_metadata(&path)?.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
        found.push(path);
    }
    // Every entry comes after its directory: in reverse, children go first.
    for path in found.iter().rev() {
        std::os::unix::fs::lchown(path, Some(id), Some(id))?;
    }
    Ok(())
}

/// Opens and shared-locks the meta file at `path`, making sure the locked file is still the one
/// at that path (an evictor may have removed it meanwhile).
fn lock_meta(path: &Path) -> Result<File, CacheError> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path, "open a meta file"))?;
        file.lock_shared().map_err(io_error(path, "lock a meta file"))?;
        let locked = file.metadata().map_err(io_error(path, "stat a meta file"))?;
        match fs::metadata(path) {
            Ok(current) if current.ino() == locked.ino() && current.dev() == locked.dev() => return Ok(file),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn build_with(bytes: usize) -> impl FnOnce(&Path) -> Result<u64, String> {
        move |dir| {
            fs::write(dir.join("file"), vec![b'x'; bytes]).map_err(|e| e.to_string())?;
            Ok(bytes as u64)
        }
    }

    /// A root worker's trees are its jobs' (nobody's), an ordinary worker's its own; a tree an
    /// earlier version left as root's is given over when next used.
    #[test]
    fn trees_belong_to_the_jobs_user() {
        let root = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(root.path(), 1 << 20).unwrap();
        let own = fs::metadata("/proc/self").unwrap().uid();
        let expected = maelstrom_container::jobs_host_id().unwrap_or(own);
        let build = |dir: &Path| {
            fs::create_dir(dir.join("sub")).map_err(|e| e.to_string())?;
            fs::write(dir.join("sub/file"), "x").map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink("sub/file", dir.join("link")).map_err(|e| e.to_string())?;
            Ok(1)
        };
        let tree = cache.get_or_build(&key(1), build).unwrap();
        let owners = |tree: &Path| {
            ["", "sub", "sub/file", "link"].map(|p| fs::symlink_metadata(tree.join(p)).unwrap().uid())
        };
        assert_eq!(owners(&tree), [expected; 4]);
        let private = fs::metadata(root.path().join(LAYOUT)).unwrap().permissions().mode() & 0o777;
        assert_eq!(private == 0o700, own == 0, "mode {private:o}");
        // A cache on a path another user could change is left as it is.
        if own == 0 {
            let shared = tempfile::tempdir().unwrap();
            fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o777)).unwrap();
            let cache = LayerCache::open(&shared.path().join("cache"), 1 << 20).unwrap();
            assert_eq!(cache.owner, None, "a world-writable parent, not sticky");
        }
        if own == 0 {
            for p in ["", "sub", "sub/file", "link"] {
                std::os::unix::fs::lchown(tree.join(p), Some(0), Some(0)).unwrap();
            }
            drop(cache);
            let cache = LayerCache::open(root.path(), 1 << 20).unwrap();
            let again = cache.get(&key(1)).unwrap().unwrap();
            assert_eq!(owners(&again), [expected; 4]);
        }
    }

    #[test]
    fn trees_are_built_once_and_survive_reopening() {
        let root = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(root.path(), 1 << 20).unwrap();
        let tree = cache.get_or_build(&key(1), build_with(10)).unwrap();
        assert_eq!(fs::read(tree.join("file")).unwrap().len(), 10);
        let again = cache.get_or_build(&key(1), |_| panic!("must not rebuild")).unwrap();
        assert_eq!(tree, again);
        drop(cache);
        let cache = LayerCache::open(root.path(), 1 << 20).unwrap();
        let reopened = cache.get_or_build(&key(1), |_| panic!("must survive a restart")).unwrap();
        assert_eq!(tree, reopened);
        assert!(root.path().join("CACHEDIR.TAG").exists());
    }

    #[test]
    fn failed_builds_leave_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(root.path(), 1 << 20).unwrap();
        let error = cache.get_or_build(&key(2), |_| Err("broken tar".into())).unwrap_err();
        assert!(error.to_string().contains("broken tar"), "{error}");
        assert_eq!(fs::read_dir(cache.dir().join("tmp")).unwrap().count(), 0);
        assert!(cache.get_or_build(&key(2), build_with(1)).is_ok());
    }

    #[test]
    fn eviction_takes_least_recently_used_and_spares_held_trees() {
        let root = tempfile::tempdir().unwrap();
        {
            let writer = LayerCache::open(root.path(), u64::MAX).unwrap();
            for n in 0..4 {
                writer.get_or_build(&key(n), build_with(100)).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // Another user holds tree 0, which is also the least recently used, while a small
        // cache evicts.
        let user = LayerCache::open(root.path(), u64::MAX).unwrap();
        user.get_or_build(&key(0), |_| panic!("exists")).unwrap();
        let meta = root.path().join(LAYOUT).join("meta").join(key(0).hex());
        File::options().write(true).open(meta).unwrap().set_modified(SystemTime::UNIX_EPOCH).unwrap();
        let small = LayerCache { size_max: 250, ..LayerCache::open(root.path(), u64::MAX).unwrap() };
        small.evict().unwrap();
        let trees = |n: u8| root.path().join(LAYOUT).join("trees").join(key(n).hex()).exists();
        assert!(trees(0), "a held tree was evicted");
        assert!(!trees(1) && !trees(2), "the least recently used trees stay");
        assert!(trees(3), "the most recent tree was evicted");
    }

    #[test]
    fn a_relative_root_gives_absolute_trees() {
        let root = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(root.path(), &cwd);
        let cache = LayerCache::open(&relative, u64::MAX).unwrap();
        let tree = cache.get_or_build(&key(1), build_with(1)).unwrap();
        assert!(tree.is_absolute(), "{}", tree.display());
    }

    /// `path` relative to `base` (both absolute), through `..` as needed.
    fn pathdiff(path: &Path, base: &Path) -> PathBuf {
        let ups = base.components().count() - 1;
        let mut out = PathBuf::new();
        for _ in 0..ups {
            out.push("..");
        }
        out.join(path.strip_prefix("/").unwrap())
    }

    #[test]
    fn get_finds_only_built_trees_and_release_lets_them_go() {
        let root = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(root.path(), u64::MAX).unwrap();
        assert_eq!(cache.get(&key(1)).unwrap(), None);
        let built = cache.get_or_build(&key(1), build_with(100)).unwrap();
        let other = LayerCache::open(root.path(), u64::MAX).unwrap();
        assert_eq!(other.get(&key(1)).unwrap(), Some(built.clone()));
        let small = LayerCache { size_max: 0, ..LayerCache::open(root.path(), u64::MAX).unwrap() };
        small.evict().unwrap();
        assert!(built.exists(), "evicted while held");
        cache.release(&key(1));
        other.release(&key(1));
        small.evict().unwrap();
        assert!(!built.exists(), "released trees can be evicted");
        assert_eq!(cache.get(&key(1)).unwrap(), None);
    }

    #[test]
    fn concurrent_builders_agree() {
        let root = tempfile::tempdir().unwrap();
        let caches: Vec<_> = (0..4).map(|_| LayerCache::open(root.path(), 1 << 20).unwrap()).collect();
        let trees: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = caches
                .iter()
                .map(|c| s.spawn(move || c.get_or_build(&key(9), build_with(5)).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(trees.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(fs::read(trees[0].join("file")).unwrap().len(), 5);
    }
}
