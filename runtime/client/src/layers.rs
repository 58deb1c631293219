//! Building layers: each [`LayerSpec`] becomes an artifact, either a tar archive or a
//! [`Manifest`] whose files are named by digest (with the local path each digest can be read
//! from). Within one builder, an identical spec is built once.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use maelstrom_wire::artifact::{Digest, Entry, EntryKind, Manifest};
use maelstrom_wire::cluster::{LayerKind, LayerRef};

use crate::digests::DigestCache;
use crate::elf;
use crate::spec::{LayerSpec, PrefixOptions};

/// A built layer.
#[derive(Debug)]
pub enum Built {
    Manifest {
        manifest: Manifest,
        digest: Digest,
        /// Where each file digest's bytes can be read.
        sources: HashMap<Digest, PathBuf>,
    },
    Tar {
        path: PathBuf,
        digest: Digest,
    },
}

impl Built {
    /// The layer as a job names it.
    pub fn layer_ref(&self) -> LayerRef {
        match self {
            Built::Manifest { digest, .. } => LayerRef { kind: LayerKind::Manifest, digest: *digest },
            Built::Tar { digest, .. } => LayerRef { kind: LayerKind::Tar, digest: *digest },
        }
    }

    /// The key of the layer's tree in a cache (distinct for each kind of artifact).
    pub fn key(&self) -> Digest {
        self.layer_ref().tree_key()
    }
}

/// Why a layer could not be built; the message names the layer and the path at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LayerError(pub String);

#[derive(Debug)]
pub struct LayerBuilder {
    project: PathBuf,
    digests: DigestCache,
    built: HashMap<String, Arc<Built>>,
}

impl LayerBuilder {
    /// Relative paths in specs are taken relative to `project`.
    pub fn new(project: PathBuf, digests: DigestCache) -> Self {
        Self { project, digests, built: HashMap::new() }
    }

    pub fn build(&mut self, spec: &LayerSpec) -> Result<Arc<Built>, LayerError> {
        let key = serde_json::to_string(spec).map_err(|e| LayerError(e.to_string()))?;
        if let Some(built) = self.built.get(&key) {
            return Ok(Arc::clone(built));
        }
        let built = Arc::new(self.build_fresh(spec)?);
        self.built.insert(key, Arc::clone(&built));
        Ok(built)
    }

    /// Writes the digest cache back.
    pub fn save(&mut self) {
        let _ = self.digests.save();
    }

    fn local(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() { path.to_path_buf() } else { self.project.join(path) }
    }

    fn build_fresh(&mut self, spec: &LayerSpec) -> Result<Built, LayerError> {
        let mut entries = Entries::default();
        match spec {
            LayerSpec::Tar { tar } => {
                let path = self.local(tar);
                let (digest, _) = self
                    .digests
                    .digest(&path)
                    .map_err(|e| LayerError(format!("tar layer {}: {e}", path.display())))?;
                return Ok(Built::Tar { path, digest });
            }
            LayerSpec::Tree { tree, exclude } => {
                let root = self.local(tree);
                let excluded: Vec<PathBuf> = exclude.iter().map(|e| self.local(e)).collect();
                let walk = walkdir::WalkDir::new(&root).follow_links(false).sort_by_file_name().into_iter();
                // Left out: `.git`, what is excluded, and any cache directory (cargo marks its
                // target directories with CACHEDIR.TAG, stale or not).
                let walk = walk.filter_entry(|e| {
                    !(e.file_name() == ".git"
                        || excluded.iter().any(|x| e.path().starts_with(x))
                        || (e.depth() > 0
                            && e.file_type().is_dir()
                            && e.path().join("CACHEDIR.TAG").exists()))
                });
                for entry in walk {
                    let entry = match entry {
                        Ok(entry) => entry,
                        // What this user cannot read, the tests could not read either.
                        Err(e)
                            if e.io_error()
                                .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied) =>
                        {
                            continue;
                        }
                        Err(e) => return Err(LayerError(format!("tree layer {}: {e}", root.display()))),
                    };
                    let kind = entry.file_type();
                    if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
                        // FIFOs, sockets and devices have no contents to copy.
                        continue;
                    }
                    let source = entry.path().to_path_buf();
                    match self.add_path(&mut entries, &source, source.clone(), false, true) {
                        Ok(()) => {}
                        Err(e) if e.contains("Permission denied") => {}
                        Err(e) => return Err(LayerError(format!("tree layer: {e}"))),
                    }
                }
            }
            LayerSpec::Command { .. } => {
                return Err(LayerError(
                    "command layers are not supported yet; use a tar or paths layer".into(),
                ));
            }
            LayerSpec::Paths { paths, prefix } => {
                for path in paths {
                    let source = self.local(path);
                    let placed = place(Path::new(path), &source, prefix)
                        .map_err(|e| LayerError(format!("paths layer: {e}")))?;
                    self.add_path(&mut entries, &source, placed, prefix.follow_symlinks, true)
                        .map_err(|e| LayerError(format!("paths layer: {e}")))?;
                }
            }
            LayerSpec::Glob { glob, prefix } => {
                let matcher = globset::Glob::new(glob)
                    .map_err(|e| LayerError(format!("glob layer {glob:?}: {e}")))?
                    .compile_matcher();
                if Path::new(glob).is_absolute() {
                    return Err(LayerError(format!(
                        "glob layer {glob:?}: patterns are relative to the project directory"
                    )));
                }
                let mut matched = Vec::new();
                for entry in walkdir::WalkDir::new(&self.project).follow_links(false).sort_by_file_name() {
                    let entry = entry.map_err(|e| LayerError(format!("glob layer {glob:?}: {e}")))?;
                    if entry.file_type().is_dir() {
                        continue;
                    }
                    let Ok(relative) = entry.path().strip_prefix(&self.project) else { continue };
                    if matcher.is_match(relative) {
                        matched.push(relative.to_path_buf());
                    }
                }
                for relative in matched {
                    let source = self.project.join(&relative);
                    let placed = place(&relative, &source, prefix)
                        .map_err(|e| LayerError(format!("glob layer: {e}")))?;
                    self.add_path(&mut entries, &source, placed, prefix.follow_symlinks, false)
                        .map_err(|e| LayerError(format!("glob layer: {e}")))?;
                }
            }
            LayerSpec::Stubs { stubs } => {
                for stub in stubs {
                    for expanded in
                        expand_braces(stub).map_err(|e| LayerError(format!("stubs layer: {e}")))?
                    {
                        let dir = expanded.ends_with('/');
                        let path = normalize(Path::new(&expanded))
                            .map_err(|e| LayerError(format!("stubs layer: {e}")))?;
                        let kind = if dir {
                            EntryKind::Directory { mode: 0o755 }
                        } else {
                            EntryKind::File { digest: Digest::of(b""), size: 0, mode: 0o644 }
                        };
                        entries.push(path, kind, None);
                    }
                }
            }
            LayerSpec::Symlinks { symlinks } => {
                for link in symlinks {
                    let path = normalize(Path::new(&link.link))
                        .map_err(|e| LayerError(format!("symlinks layer: {e}")))?;
                    entries.push(path, EntryKind::Symlink { target: link.target.as_bytes().to_vec() }, None);
                }
            }
            LayerSpec::SharedLibraryDependencies { binaries, prefix } => {
                for binary in binaries {
                    let source = self.local(binary);
                    let libraries = elf::dependencies(&source)
                        .map_err(|e| LayerError(format!("shared library layer: {e}")))?;
                    for library in libraries {
                        let placed = place(&library.path, &library.host, prefix)
                            .map_err(|e| LayerError(format!("shared library layer: {e}")))?;
                        self.add_file(&mut entries, &library.host, placed)
                            .map_err(|e| LayerError(format!("shared library layer: {e}")))?;
                    }
                }
            }
        }
        let Entries { entries, sources } = entries;
        let manifest = Manifest::from_entries(entries);
        let digest = manifest.digest();
        Ok(Built::Manifest { manifest, digest, sources })
    }

    /// Adds what is at `source` under `placed`: a file, a symlink (or its target, when
    /// following), or, for a directory named in a paths layer, an empty directory.
    fn add_path(
        &mut self,
        entries: &mut Entries,
        source: &Path,
        placed: PathBuf,
        follow: bool,
        dirs: bool,
    ) -> Result<(), String> {
        let metadata = std::fs::symlink_metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
        if metadata.file_type().is_symlink() && !follow {
            let target = std::fs::read_link(source).map_err(|e| format!("{}: {e}", source.display()))?;
            entries.push(placed, EntryKind::Symlink { target: target.as_os_str().as_bytes().to_vec() }, None);
            return Ok(());
        }
        let metadata = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
        if !metadata.is_dir() && !metadata.is_file() {
            return Err(format!(
                "{} is not a regular file, directory or symlink (a FIFO, socket or device cannot be in a layer)",
                source.display()
            ));
        }
        if metadata.is_dir() {
            if dirs {
                entries.push(
                    placed,
                    EntryKind::Directory { mode: metadata.permissions().mode() & 0o7777 },
                    None,
                );
            }
            return Ok(());
        }
        self.add_file(entries, source, placed)
    }

    fn add_file(&mut self, entries: &mut Entries, source: &Path, placed: PathBuf) -> Result<(), String> {
        let (digest, metadata) =
            self.digests.digest(source).map_err(|e| format!("{}: {e}", source.display()))?;
        let kind =
            EntryKind::File { digest, size: metadata.len(), mode: metadata.permissions().mode() & 0o7777 };
        entries.push(placed, kind, Some(source.to_path_buf()));
        Ok(())
    }
}

#[derive(Default)]
struct Entries {
    entries: Vec<Entry>,
    sources: HashMap<Digest, PathBuf>,
}

impl Entries {
    fn push(&mut self, path: PathBuf, kind: EntryKind, source: Option<PathBuf>) {
        if let (EntryKind::File { digest, .. }, Some(source)) = (&kind, source) {
            self.sources.entry(*digest).or_insert(source);
        }
        self.entries.push(Entry { path: path.as_os_str().as_bytes().to_vec(), kind });
    }
}

/// Applies the prefix options to `given` (the path as the spec names it; `source` is where it
/// is on this host) and returns its absolute place in the layer.
fn place(given: &Path, source: &Path, prefix: &PrefixOptions) -> Result<PathBuf, String> {
    let mut path = if prefix.canonicalize {
        std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?
    } else {
        given.to_path_buf()
    };
    if let Some(strip) = &prefix.strip_prefix
        && let Ok(rest) = path.strip_prefix(strip)
    {
        path = rest.to_path_buf();
    }
    if let Some(prepend) = &prefix.prepend_prefix {
        let rest = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
        path = Path::new(prepend).join(rest);
    }
    normalize(&path)
}

/// Makes `path` absolute and normalized, refusing `..`.
fn normalize(path: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(format!("{} climbs with '..'", path.display())),
            Component::Normal(part) => out.push(part),
        }
    }
    if out == Path::new("/") {
        return Err(format!("{:?} names the root itself", path.display().to_string()));
    }
    Ok(out)
}

/// Expands `{a,b}` alternatives (nested too): `/dev/{null,zero}` → `/dev/null`, `/dev/zero`.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("unmatched '}}' in {pattern:?}"));
        }
        return Ok(vec![pattern.to_owned()]);
    };
    let mut depth = 0;
    let mut close = None;
    let mut splits = Vec::new();
    for (i, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            ',' if depth == 1 => splits.push(open + i),
            _ => {}
        }
    }
    let close = close.ok_or_else(|| format!("unmatched '{{' in {pattern:?}"))?;
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut bounds = vec![open];
    bounds.extend(&splits);
    bounds.push(close);
    let mut out = Vec::new();
    for pair in bounds.windows(2) {
        let alternative = &pattern[pair[0] + 1..pair[1]];
        for expanded in expand_braces(&format!("{head}{alternative}{tail}"))? {
            out.push(expanded);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(project: &Path) -> LayerBuilder {
        LayerBuilder::new(project.to_path_buf(), DigestCache::in_memory())
    }

    fn paths_of(built: &Built) -> Vec<String> {
        match built {
            Built::Manifest { manifest, .. } => {
                manifest.entries.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect()
            }
            Built::Tar { .. } => panic!("a tar"),
        }
    }

    fn spec(json: &str) -> LayerSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn braces_expand() {
        assert_eq!(expand_braces("/dev/{null,zero}").unwrap(), ["/dev/null", "/dev/zero"]);
        assert_eq!(expand_braces("/{a,b{c,d}}/x").unwrap(), ["/a/x", "/bc/x", "/bd/x"]);
        assert_eq!(expand_braces("/plain").unwrap(), ["/plain"]);
        assert!(expand_braces("/{a,b").is_err());
        assert!(expand_braces("/a}").is_err());
    }

    #[test]
    fn stubs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let built =
            builder(dir.path()).build(&spec(r#"{"stubs": ["/dev/{null,zero}", "/tmp/", "proc/"]}"#)).unwrap();
        assert_eq!(paths_of(&built), ["/dev/null", "/dev/zero", "/proc", "/tmp"]);
        let built = builder(dir.path())
            .build(&spec(r#"{"symlinks": [{"link": "/bin/sh", "target": "busybox"}]}"#))
            .unwrap();
        assert_eq!(paths_of(&built), ["/bin/sh"]);
    }

    #[test]
    fn paths_with_prefix_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
        std::fs::write(dir.path().join("target/debug/app"), b"bin").unwrap();
        std::os::unix::fs::symlink("app", dir.path().join("target/debug/link")).unwrap();
        let mut b = builder(dir.path());
        let built = b.build(&spec(r#"{"paths": ["target/debug/app", "target/debug/link"]}"#)).unwrap();
        assert_eq!(paths_of(&built), ["/target/debug/app", "/target/debug/link"]);
        if let Built::Manifest { manifest, sources, .. } = &*built {
            assert!(matches!(manifest.entries[1].kind, EntryKind::Symlink { .. }));
            assert_eq!(sources.len(), 1);
        }
        let built = b
            .build(&spec(r#"{"paths": ["target/debug/link"], "follow_symlinks": true, "strip_prefix": "target/", "prepend_prefix": "/opt"}"#))
            .unwrap();
        assert_eq!(paths_of(&built), ["/opt/debug/link"]);
        if let Built::Manifest { manifest, .. } = &*built {
            assert!(matches!(manifest.entries[0].kind, EntryKind::File { size: 3, .. }));
        }
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        let built = b.build(&spec(r#"{"paths": ["target/debug/app"], "canonicalize": true}"#)).unwrap();
        assert_eq!(paths_of(&built), [canonical.join("target/debug/app").display().to_string()]);
    }

    #[test]
    fn trees_keep_their_paths_and_skip_what_is_excluded() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["pkg/src/lib.rs", "pkg/tests/data/x", "pkg/target/debug/big", "pkg/.git/HEAD"] {
            std::fs::create_dir_all(dir.path().join(f).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(f), f).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("pkg/empty")).unwrap();
        // A stale target directory (cargo tags them), and a FIFO that nothing writes to.
        std::fs::create_dir_all(dir.path().join("pkg/old-target/debug")).unwrap();
        std::fs::write(
            dir.path().join("pkg/old-target/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        std::fs::write(dir.path().join("pkg/old-target/debug/big"), "x").unwrap();
        maelstrom_container::mkfifo(&dir.path().join("pkg/fifo"), 0o644).unwrap();
        let root = dir.path().join("pkg");
        let spec = LayerSpec::Tree {
            tree: root.display().to_string(),
            exclude: vec![root.join("target").display().to_string()],
        };
        let built = builder(dir.path()).build(&spec).unwrap();
        let paths = paths_of(&built);
        let at = |rel: &str| root.join(rel).display().to_string();
        for present in ["src/lib.rs", "tests/data/x", "empty"] {
            assert!(paths.contains(&at(present)), "{present} missing from {paths:?}");
        }
        assert!(
            !paths.iter().any(|p| p.contains("target") || p.contains("/.git") || p.contains("fifo")),
            "{paths:?}"
        );
        let fifo = LayerSpec::Paths {
            paths: vec![root.join("fifo").display().to_string()],
            prefix: PrefixOptions::default(),
        };
        let error = builder(dir.path()).build(&fifo).unwrap_err();
        assert!(error.0.contains("cannot be in a layer"), "{error}");
    }

    #[test]
    fn globs_match_files_under_the_project() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["src/a.rs", "src/b.rs", "src/deep/c.rs", "README"] {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, f).unwrap();
        }
        let built =
            builder(dir.path()).build(&spec(r#"{"glob": "src/**/*.rs", "strip_prefix": "src"}"#)).unwrap();
        assert_eq!(paths_of(&built), ["/a.rs", "/b.rs", "/deep/c.rs"]);
    }

    #[test]
    fn shared_libraries_of_true() {
        let dir = tempfile::tempdir().unwrap();
        let built =
            builder(dir.path()).build(&spec(r#"{"shared_library_dependencies": ["/bin/true"]}"#)).unwrap();
        let paths = paths_of(&built);
        assert!(paths.iter().any(|p| p.contains("libc.so")), "{paths:?}");
    }

    #[test]
    fn errors_name_the_layer_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = builder(dir.path());
        let cases = [
            (r#"{"paths": ["missing/file"]}"#, "paths layer:"),
            (r#"{"tar": "missing.tar"}"#, "tar layer"),
            (r#"{"command": "make"}"#, "command layers are not supported yet"),
            (r#"{"glob": "/abs/*"}"#, "relative to the project"),
            (r#"{"stubs": ["/../etc"]}"#, "climbs"),
            (r#"{"shared_library_dependencies": ["missing"]}"#, "shared library layer"),
        ];
        for (json, expected) in cases {
            let error = b.build(&spec(json)).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
        let error = b.build(&spec(r#"{"paths": ["missing/file"]}"#)).unwrap_err().to_string();
        assert!(error.contains("missing/file: No such file or directory"), "{error}");
    }

    #[test]
    fn identical_specs_are_built_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = builder(dir.path());
        let one = b.build(&spec(r#"{"stubs": ["/a"]}"#)).unwrap();
        let two = b.build(&spec(r#"{"stubs": ["/a"]}"#)).unwrap();
        assert!(Arc::ptr_eq(&one, &two));
    }
}
