//! Turning artifacts into trees: a manifest's entries, or a tar archive, written into a fresh
//! directory that becomes one layer of a container's root.
//!
//! Both refuse anything that could write outside the directory: absolute or `..` paths, an
//! entry below a symlink, a hard link to something outside, a relative symlink that climbs
//! above the layer's root. Device nodes are refused too (an unprivileged worker cannot make
//! them, and jobs get devices through `devices` mounts). File contents are checked against their
//! digests as they are copied.
//!
//! Both stay within a [`Budget`] of bytes and entries, so a small artifact cannot fill the
//! worker's disk: a manifest that names one blob many times gets one copy and hard links to it,
//! and a manifest or archive too big for the budget is refused with its size.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use maelstrom_wire::artifact::{Digest, EntryKind, Hasher, Manifest};
use maelstrom_wire::cluster::Bytes;

/// Size charged per entry beyond its bytes, roughly a filesystem block.
const ENTRY_OVERHEAD_BYTES: u64 = 4096;

/// Bits of a mode a layer may keep: permissions and sticky, never setuid or setgid.
const MODE_KEPT: u32 = 0o1777;

/// Entries one layer may have at most.
pub const ENTRIES_MAX: u64 = 1 << 20;

/// How much one layer may take on disk: bytes (each entry charged [`ENTRY_OVERHEAD_BYTES`]
/// beyond its contents, a hard link only that) and entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub entries: u64,
}

impl Budget {
    /// At most `bytes`, and at most [`ENTRIES_MAX`] entries.
    pub fn within(bytes: u64) -> Self {
        Self { bytes, entries: ENTRIES_MAX }
    }

    fn entries_exceeded(&self, entries: u64) -> Result<(), String> {
        if entries > self.entries {
            return Err(format!(
                "the layer has more than {} entries (split it into several layers)",
                self.entries
            ));
        }
        Ok(())
    }

    fn bytes_exceeded(&self, bytes: u64) -> Result<(), String> {
        if bytes > self.bytes {
            return Err(format!(
                "the layer needs more than {}, nine tenths of the space left where the cache is \
                 (free some space, or make the layer smaller)",
                Bytes(self.bytes)
            ));
        }
        Ok(())
    }
}

/// Joins `relative` (already checked) to `root`, refusing to go below a symlink on the way.
fn place(root: &Path, relative: &Path) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    let mut components = relative.components().peekable();
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_some()
            && let Ok(metadata) = fs::symlink_metadata(&path)
            && metadata.file_type().is_symlink()
        {
            return Err(format!("{} lies below the symlink {}", relative.display(), path.display()));
        }
    }
    Ok(path)
}

/// Checks a path from an artifact and returns it relative to the layer's root.
fn relative(path: &Path, absolute_allowed: bool) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir if absolute_allowed => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{} is an absolute path", path.display()));
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{} contains '..'", path.display())),
            Component::Normal(part) => out.push(part),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, placed at `link` (relative to the root), climbs above
/// the root.
fn escapes(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        // Resolved against the container's root at run time, so it cannot leave the container.
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Makes the missing directories above `path` (which lies below the layer's root), once
/// `charge` accepted their number: each costs like an entry.
fn create_parents(path: &Path, charge: impl FnOnce(u64) -> Result<(), String>) -> Result<(), String> {
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir {
        if fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d);
        dir = d.parent();
    }
    charge(missing.len() as u64)?;
    for d in missing.iter().rev() {
        fs::create_dir(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    Ok(())
}

/// Charges `made` directories made on the way to an entry, and checks the running totals.
fn charge(budget: &Budget, size: &mut u64, count: &mut u64, made: u64) -> Result<(), String> {
    *size = size.saturating_add(made.saturating_mul(ENTRY_OVERHEAD_BYTES));
    *count = count.saturating_add(made);
    budget.entries_exceeded(*count)?;
    budget.bytes_exceeded(*size)
}

/// Makes the directory `dest` (or keeps it) with `mode`, plus the owner's rwx, so the tree can
/// be filled and later deleted. Never through a symlink: a directory entry that names an
/// earlier symlink is refused, or its chmod would land outside the layer.
fn make_dir(dest: &Path, mode: u32) -> Result<(), String> {
    match fs::symlink_metadata(dest) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(format!("directory {} would replace a symlink", dest.display()));
        }
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => return Err(format!("directory {} would replace a file", dest.display())),
        Err(_) => fs::create_dir(dest).map_err(|e| format!("create {}: {e}", dest.display()))?,
    }
    fs::set_permissions(dest, fs::Permissions::from_mode((mode & MODE_KEPT) | 0o700))
        .map_err(|e| format!("chmod {}: {e}", dest.display()))
}

/// Copies `source` into `dest`, checking it is `declared` bytes long and hashes to `digest`;
/// returns its size. Never writes more than `declared` bytes.
fn copy_verified(
    source: &Path,
    dest: &Path,
    digest: &Digest,
    declared: u64,
    mode: u32,
) -> Result<u64, String> {
    let mut input = File::open(source)
        .map_err(|e| format!("open {}: {e}", source.display()))?
        .take(declared.saturating_add(1));
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & MODE_KEPT)
        .open(dest)
        .map_err(|e| format!("create {}: {e}", dest.display()))?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read {}: {e}", source.display())),
        };
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(|e| format!("write {}: {e}", dest.display()))?;
        size += n as u64;
    }
    if size != declared {
        return Err(format!("{} has {size} bytes or more, its entry says {declared}", dest.display()));
    }
    if hasher.finish() != *digest {
        return Err(format!("{} changed while it was being cached; run again", source.display()));
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(mode & MODE_KEPT))
        .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
    Ok(size)
}

/// Writes the tree `manifest` describes into `dir`, taking each file's bytes from the local
/// path `source` gives for its digest. Files with the same contents and mode are hard links to
/// one copy. Returns the bytes written.
pub fn materialize(
    manifest: &Manifest,
    source: &dyn Fn(&Digest) -> Option<PathBuf>,
    dir: &Path,
    budget: &Budget,
) -> Result<u64, String> {
    budget.entries_exceeded(manifest.entries.len() as u64)?;
    // Refuse up front what the declared sizes already put over the budget.
    let mut unique = std::collections::HashSet::new();
    let mut declared = 0u64;
    for entry in &manifest.entries {
        declared = declared.saturating_add(ENTRY_OVERHEAD_BYTES);
        if let EntryKind::File { digest, size, mode } = &entry.kind
            && unique.insert((*digest, mode & MODE_KEPT))
        {
            declared = declared.saturating_add(*size);
        }
    }
    budget.bytes_exceeded(declared)?;

    let mut copies: HashMap<(Digest, u32), PathBuf> = HashMap::new();
    let mut size = 0u64;
    let mut count = 0u64;
    for entry in &manifest.entries {
        let path = Path::new(OsStr::from_bytes(&entry.path));
        let rel = relative(path, true)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = place(dir, &rel)?;
        create_parents(&dest, |made| charge(budget, &mut size, &mut count, made + 1))?;
        match &entry.kind {
            EntryKind::Directory { mode } => {
                make_dir(&dest, *mode)?;
            }
            EntryKind::File { digest, mode, size: 0 } if *digest == Digest::of(b"") => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & MODE_KEPT)
                    .open(&dest)
                    .map_err(|e| format!("create {}: {e}", dest.display()))?;
            }
            EntryKind::File { digest, mode, size: declared } => {
                let key = (*digest, mode & MODE_KEPT);
                if let Some(first) = copies.get(&key) {
                    match fs::hard_link(first, &dest) {
                        Ok(()) => continue,
                        // Past the filesystem's link limit: this copy starts the next group.
                        Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {}
                        Err(e) => return Err(format!("link {} to {}: {e}", dest.display(), first.display())),
                    }
                }
                let from =
                    source(digest).ok_or_else(|| format!("no source for {} ({digest})", rel.display()))?;
                size += copy_verified(&from, &dest, digest, *declared, *mode)?;
                budget.bytes_exceeded(size)?;
                copies.insert(key, dest);
            }
            EntryKind::Symlink { target } => {
                let target = Path::new(OsStr::from_bytes(target));
                if escapes(&rel, target) {
                    return Err(format!(
                        "symlink {} -> {} points outside the layer",
                        rel.display(),
                        target.display()
                    ));
                }
                std::os::unix::fs::symlink(target, &dest)
                    .map_err(|e| format!("create {}: {e}", dest.display()))?;
            }
        }
    }
    Ok(size)
}

/// Extracts the tar archive at `archive` into `dir`. Returns the bytes written.
pub fn extract_tar(archive: &Path, dir: &Path, budget: &Budget) -> Result<u64, String> {
    let file = File::open(archive).map_err(|e| format!("open {}: {e}", archive.display()))?;
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    let entries = tar.entries().map_err(|e| format!("read {}: {e}", archive.display()))?;
    let mut size = 0u64;
    let mut count = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("read {}: {e}", archive.display()))?;
        let raw =
            entry.path().map_err(|e| format!("{}: bad entry name: {e}", archive.display()))?.into_owned();
        let bad = |why: String| format!("{}: entry {}: {why}", archive.display(), raw.display());
        let rel = relative(&raw, false).map_err(bad)?;
        if let Some(name) = rel.file_name().and_then(|n| n.to_str())
            && name.starts_with(".wh.")
        {
            return Err(bad("OCI whiteouts are not supported yet".into()));
        }
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = place(dir, &rel).map_err(bad)?;
        create_parents(&dest, |made| charge(budget, &mut size, &mut count, made + 1)).map_err(bad)?;
        let mode = entry.header().mode().unwrap_or(0o644) & MODE_KEPT;
        match kind {
            tar::EntryType::Directory => {
                make_dir(&dest, mode).map_err(bad)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if fs::symlink_metadata(&dest).is_ok() {
                    fs::remove_file(&dest).map_err(|e| bad(e.to_string()))?;
                }
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&dest)
                    .map_err(|e| bad(e.to_string()))?;
                // Copied with a cap: a sparse entry expands to more than the archive holds.
                let room = budget.bytes.saturating_sub(size).saturating_add(1);
                size += io::copy(&mut (&mut entry).take(room), &mut out).map_err(|e| bad(e.to_string()))?;
                budget.bytes_exceeded(size).map_err(bad)?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(|e| bad(e.to_string()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad("symlink without a target".into()))?;
                if escapes(&rel, &target) {
                    return Err(bad(format!("symlink to {} points outside the layer", target.display())));
                }
                std::os::unix::fs::symlink(&target, &dest).map_err(|e| bad(e.to_string()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad("hard link without a target".into()))?;
                let target_rel =
                    relative(&target, false).map_err(|why| bad(format!("hard link target {why}")))?;
                let source = place(dir, &target_rel).map_err(bad)?;
                if !source.exists() {
                    return Err(bad(format!(
                        "hard link to {}, which is not in the archive before it",
                        target.display()
                    )));
                }
                fs::hard_link(&source, &dest).map_err(|e| bad(e.to_string()))?;
            }
            tar::EntryType::Fifo => {
                maelstrom_container::mkfifo(&dest, mode).map_err(|e| bad(e.to_string()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(bad("device nodes are refused (use a devices mount instead)".into()));
            }
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(bad(format!("unsupported entry type {other:?}"))),
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maelstrom_wire::artifact::Entry;
    use std::os::unix::fs::MetadataExt;

    const ANY: Budget = Budget { bytes: u64::MAX, entries: u64::MAX };

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let bytes = builder.into_inner().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        file
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    fn append(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        data: &[u8],
        link: Option<&str>,
    ) {
        let mut h = header(kind, data.len() as u64);
        // Set names straight in the header: the builder's own checks would refuse the bad ones.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn a_plain_archive_extracts() {
        let archive = tar_with(|b| {
            append(b, tar::EntryType::Directory, "usr/", b"", None);
            append(b, tar::EntryType::Regular, "usr/hello", b"hi", None);
            append(b, tar::EntryType::Symlink, "usr/link", b"", Some("hello"));
            append(b, tar::EntryType::Symlink, "usr/abs", b"", Some("/usr/hello"));
            append(b, tar::EntryType::Link, "usr/hard", b"", Some("usr/hello"));
            append(b, tar::EntryType::Fifo, "usr/fifo", b"", None);
        });
        let dir = tempfile::tempdir().unwrap();
        extract_tar(archive.path(), dir.path(), &ANY).unwrap();
        assert_eq!(fs::read(dir.path().join("usr/hello")).unwrap(), b"hi");
        assert_eq!(fs::read(dir.path().join("usr/link")).unwrap(), b"hi");
        assert_eq!(fs::read(dir.path().join("usr/hard")).unwrap(), b"hi");
        assert_eq!(fs::read_link(dir.path().join("usr/abs")).unwrap(), Path::new("/usr/hello"));
    }

    #[test]
    fn hostile_archives_are_refused_with_the_reason() {
        type Build = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
        let cases: Vec<(Build, &str)> = vec![
            (Box::new(|b| append(b, tar::EntryType::Regular, "../evil", b"x", None)), "contains '..'"),
            (
                Box::new(|b| append(b, tar::EntryType::Regular, "/etc/evil", b"x", None)),
                "is an absolute path",
            ),
            (
                Box::new(|b| append(b, tar::EntryType::Symlink, "up", b"", Some("../../etc"))),
                "points outside the layer",
            ),
            (
                Box::new(|b| {
                    append(b, tar::EntryType::Symlink, "etc", b"", Some("/etc"));
                    append(b, tar::EntryType::Regular, "etc/passwd", b"x", None);
                }),
                "lies below the symlink",
            ),
            (Box::new(|b| append(b, tar::EntryType::Link, "hard", b"", Some("../outside"))), "contains '..'"),
            (
                Box::new(|b| append(b, tar::EntryType::Char, "dev/null", b"", None)),
                "device nodes are refused",
            ),
            (Box::new(|b| append(b, tar::EntryType::Regular, "a/.wh.b", b"", None)), "whiteouts"),
            (
                Box::new(|b| {
                    append(b, tar::EntryType::Symlink, "home", b"", Some("/nonexistent-maelstrom-target"));
                    append(b, tar::EntryType::Directory, "home", b"", None);
                }),
                "would replace a symlink",
            ),
        ];
        for (build, expected) in cases {
            let archive = tar_with(|b| build(b));
            let dir = tempfile::tempdir().unwrap();
            let error = extract_tar(archive.path(), dir.path(), &ANY).unwrap_err();
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
    }

    #[test]
    fn read_only_directories_with_contents_build_and_delete() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"x").unwrap();
        let manifest = Manifest::from_entries([
            Entry { path: b"/ro".to_vec(), kind: EntryKind::Directory { mode: 0o555 } },
            Entry {
                path: b"/ro/f".to_vec(),
                kind: EntryKind::File { digest: Digest::of(b"x"), size: 1, mode: 0o444 },
            },
        ]);
        let dir = tempfile::tempdir().unwrap();
        let source = src.path().join("f");
        materialize(&manifest, &|_| Some(source.clone()), dir.path(), &ANY).unwrap();
        assert_eq!(fs::read(dir.path().join("ro/f")).unwrap(), b"x");
        fs::remove_dir_all(dir.path().join("ro")).unwrap();
    }

    #[test]
    fn manifests_materialize_and_verify_contents() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("f"), b"content").unwrap();
        let digest = Digest::of(b"content");
        let manifest = Manifest::from_entries([
            Entry { path: b"/bin/f".to_vec(), kind: EntryKind::File { digest, size: 7, mode: 0o4755 } },
            Entry { path: b"/tmp".to_vec(), kind: EntryKind::Directory { mode: 0o1777 } },
            Entry { path: b"/lib/l".to_vec(), kind: EntryKind::Symlink { target: b"../bin/f".to_vec() } },
        ]);
        let source = src.path().join("f");
        let dir = tempfile::tempdir().unwrap();
        materialize(&manifest, &|_| Some(source.clone()), dir.path(), &ANY).unwrap();
        assert_eq!(fs::read(dir.path().join("lib/l")).unwrap(), b"content");
        let mode = fs::metadata(dir.path().join("bin/f")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "setuid must be dropped");
        assert_eq!(fs::metadata(dir.path().join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);

        // A directory reached through a symlink is never changed.
        let outside = tempfile::tempdir().unwrap();
        fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let hostile = Manifest::from_entries([
            Entry {
                path: b"/a".to_vec(),
                kind: EntryKind::Symlink { target: outside.path().as_os_str().as_bytes().to_vec() },
            },
            Entry { path: b"/a/".to_vec(), kind: EntryKind::Directory { mode: 0o777 } },
        ]);
        let third = tempfile::tempdir().unwrap();
        let error = materialize(&hostile, &|_| None, third.path(), &ANY).unwrap_err();
        assert!(error.contains("would replace a symlink"), "{error}");
        assert_eq!(fs::metadata(outside.path()).unwrap().permissions().mode() & 0o777, 0o700);

        let lying = Manifest::from_entries([Entry {
            path: b"/f".to_vec(),
            kind: EntryKind::File { digest, size: 3, mode: 0o644 },
        }]);
        let fourth = tempfile::tempdir().unwrap();
        let error = materialize(&lying, &|_| Some(source.clone()), fourth.path(), &ANY).unwrap_err();
        assert!(error.ends_with("has 4 bytes or more, its entry says 3"), "{error}");

        fs::write(&source, b"changed").unwrap();
        let again = tempfile::tempdir().unwrap();
        let error = materialize(&manifest, &|_| Some(source.clone()), again.path(), &ANY).unwrap_err();
        assert!(error.contains("changed while it was being cached"), "{error}");
    }

    #[test]
    fn a_blob_named_many_times_is_one_copy_and_budgets_hold() {
        let src = tempfile::tempdir().unwrap();
        let blob = vec![7u8; 1000];
        fs::write(src.path().join("b"), &blob).unwrap();
        let digest = Digest::of(&blob);
        let file = |i: usize, mode: u32| Entry {
            path: format!("/d/{i}").into_bytes(),
            kind: EntryKind::File { digest, size: 1000, mode },
        };
        let mut entries: Vec<Entry> = (0..300).map(|i| file(i, 0o644)).collect();
        entries.push(file(300, 0o755));
        let manifest = Manifest::from_entries(entries);
        let source = src.path().join("b");
        let from = |_: &Digest| Some(source.clone());

        let dir = tempfile::tempdir().unwrap();
        let size = materialize(&manifest, &from, dir.path(), &ANY).unwrap();
        let first = fs::metadata(dir.path().join("d/0")).unwrap();
        assert_eq!(first.nlink(), 300, "every 0644 copy is a link to the first");
        assert_eq!(fs::metadata(dir.path().join("d/299")).unwrap().ino(), first.ino());
        let other = fs::metadata(dir.path().join("d/300")).unwrap();
        assert_ne!(other.ino(), first.ino(), "another mode needs its own copy");
        assert_eq!(fs::read(dir.path().join("d/123")).unwrap(), blob);
        // 301 entries and the directory /d they made on the way; a link costs its entry only.
        assert_eq!(size, 302 * ENTRY_OVERHEAD_BYTES + 2 * 1000);

        // Refused before anything is written: too many entries, or too many bytes.
        let few = Budget { bytes: u64::MAX, entries: 100 };
        let empty = tempfile::tempdir().unwrap();
        let error = materialize(&manifest, &from, empty.path(), &few).unwrap_err();
        assert!(error.contains("more than 100 entries"), "{error}");
        let small = Budget { bytes: 64 << 10, entries: u64::MAX };
        let error = materialize(&manifest, &from, empty.path(), &small).unwrap_err();
        assert!(error.contains("needs more than 64 KiB"), "{error}");
        assert_eq!(fs::read_dir(empty.path()).unwrap().count(), 0);
    }

    #[test]
    fn directories_made_on_the_way_count_against_the_budget() {
        let deep = format!("/{}", vec!["d"; 500].join("/"));
        let manifest = Manifest::from_entries([Entry {
            path: format!("{deep}/f").into_bytes(),
            kind: EntryKind::File { digest: Digest::of(b""), size: 0, mode: 0o644 },
        }]);
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget { bytes: u64::MAX, entries: 100 };
        let error = materialize(&manifest, &|_| None, dir.path(), &budget).unwrap_err();
        assert!(error.contains("more than 100 entries"), "{error}");
        assert!(!dir.path().join("d").exists(), "nothing is made past the budget");
        let archive = tar_with(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            b.append_data(&mut h, format!("{}/f", &deep[1..]), &b"x"[..]).unwrap();
        });
        let error = extract_tar(archive.path(), dir.path(), &budget).unwrap_err();
        assert!(error.contains("more than 100 entries"), "{error}");
        materialize(&manifest, &|_| None, dir.path(), &ANY).unwrap();
    }

    #[test]
    fn archives_stay_within_their_budget() {
        let archive = tar_with(|b| {
            append(b, tar::EntryType::Regular, "big", &vec![1u8; 100_000], None);
        });
        let dir = tempfile::tempdir().unwrap();
        let small = Budget { bytes: 50_000, entries: u64::MAX };
        let error = extract_tar(archive.path(), dir.path(), &small).unwrap_err();
        assert!(error.contains("needs more than 48.8 KiB"), "{error}");
        assert!(
            fs::metadata(dir.path().join("big")).unwrap().len() <= 50_001,
            "the copy stops at the budget"
        );

        let many = tar_with(|b| {
            for i in 0..10 {
                append(b, tar::EntryType::Regular, &format!("f{i}"), b"x", None);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let few = Budget { bytes: u64::MAX, entries: 5 };
        let error = extract_tar(many.path(), dir.path(), &few).unwrap_err();
        assert!(error.contains("more than 5 entries"), "{error}");
    }
}
