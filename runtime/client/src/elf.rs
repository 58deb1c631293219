//! The shared libraries an ELF binary needs: its interpreter and the closure of its `DT_NEEDED`
//! entries, found the way the dynamic loader finds them (RPATH, RUNPATH with `$ORIGIN`, the
//! directories of /etc/ld.so.conf, then the system directories). No program is run.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// What the loader reads of one ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Dynamic {
    machine: u16,
    class64: bool,
    interpreter: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn c_string(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Reads `len` bytes at `offset` of `file`, or `None` past its end.
fn read_at(file: &fs::File, offset: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

/// Parses the parts of a little-endian 64-bit ELF file the loader uses, reading only those.
/// `None` if it is not one (statically linked files parse with nothing needed).
fn parse(file: &fs::File) -> Option<Dynamic> {
    let header = read_at(file, 0, 64)?;
    if header.get(..4)? != b"\x7fELF" || *header.get(4)? != 2 || *header.get(5)? != 1 {
        return None;
    }
    let machine = u16_at(&header, 18)?;
    let phoff = u64_at(&header, 32)?;
    let phentsize = u16_at(&header, 54)? as usize;
    let phnum = u16_at(&header, 56)? as usize;
    let headers = read_at(file, phoff, phentsize.checked_mul(phnum)?)?;
    let mut loads = Vec::new();
    let mut dynamic = None;
    let mut out = Dynamic { machine, class64: true, ..Dynamic::default() };
    for i in 0..phnum {
        let ph = i * phentsize;
        let kind = u32_at(&headers, ph)?;
        let offset = u64_at(&headers, ph + 8)?;
        let vaddr = u64_at(&headers, ph + 16)?;
        let filesz = u64_at(&headers, ph + 32)?;
        match kind {
            1 => loads.push((vaddr, offset, filesz)),
            2 => dynamic = Some((offset, filesz)),
            3 => {
                out.interpreter =
                    read_at(file, offset, usize::try_from(filesz).ok()?).and_then(|b| c_string(&b, 0))
            }
            _ => {}
        }
    }
    let Some((dyn_offset, dyn_size)) = dynamic else { return Some(out) };
    let to_offset = |vaddr: u64| {
        loads.iter().find(|(v, _, size)| vaddr >= *v && vaddr < v + size).map(|(v, off, _)| vaddr - v + off)
    };
    let (mut strtab, mut strsz) = (None, 0u64);
    let (mut needed, mut rpath, mut runpath) = (Vec::new(), Vec::new(), Vec::new());
    let section = read_at(file, dyn_offset, usize::try_from(dyn_size).ok()?)?;
    for entry in section.chunks_exact(16) {
        let tag = u64_at(entry, 0)?;
        let value = u64_at(entry, 8)?;
        match tag {
            0 => break,
            1 => needed.push(value),
            5 => strtab = to_offset(value),
            10 => strsz = value,
            15 => rpath.push(value),
            29 => runpath.push(value),
            _ => {}
        }
    }
    let strings = read_at(file, strtab?, usize::try_from(strsz).ok()?)?;
    let string = |offset: u64| c_string(&strings, usize::try_from(offset).ok()?);
    out.needed = needed.into_iter().filter_map(string).collect();
    let split = |list: Vec<u64>| -> Vec<String> {
        list.into_iter()
            .filter_map(string)
            .flat_map(|s| s.split(':').map(String::from).collect::<Vec<_>>())
            .collect()
    };
    out.rpath = split(rpath);
    out.runpath = split(runpath);
    Some(out)
}

/// The directories of /etc/ld.so.conf (following `include` globs).
fn ld_so_conf(file: &Path, depth: usize, dirs: &mut Vec<PathBuf>) {
    let Ok(text) = fs::read_to_string(file) else { return };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            if depth > 4 {
                continue;
            }
            let pattern = pattern.trim();
            let pattern = if Path::new(pattern).is_absolute() {
                PathBuf::from(pattern)
            } else {
                file.parent().unwrap_or(Path::new("/")).join(pattern)
            };
            let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name().and_then(|n| n.to_str()))
            else {
                continue;
            };
            let Ok(glob) = globset::Glob::new(name) else { continue };
            let matcher = glob.compile_matcher();
            let mut files: Vec<PathBuf> = fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| matcher.is_match(n)))
                .collect();
            files.sort();
            for f in files {
                ld_so_conf(&f, depth + 1, dirs);
            }
        } else if !line.is_empty() {
            dirs.push(PathBuf::from(line));
        }
    }
}

fn system_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    ld_so_conf(Path::new("/etc/ld.so.conf"), 0, &mut dirs);
    let triplet = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => other,
    };
    for dir in [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ] {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

fn expand_origin(entry: &str, origin: &Path) -> PathBuf {
    let origin = origin.to_string_lossy();
    PathBuf::from(entry.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
}

/// A library the binary needs: where the loader will look it up (its path in the layer), and
/// the file on this host that holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Library {
    pub path: PathBuf,
    pub host: PathBuf,
}

/// The interpreter and every library `binary` needs, transitively.
pub fn dependencies(binary: &Path) -> Result<Vec<Library>, String> {
    let file = fs::File::open(binary).map_err(|e| format!("read {}: {e}", binary.display()))?;
    let Some(root) = parse(&file) else {
        return Err(format!("{} is not a 64-bit little-endian ELF file", binary.display()));
    };
    let system = system_dirs();
    let mut found: BTreeSet<Library> = BTreeSet::new();
    if let Some(interpreter) = &root.interpreter {
        let path = PathBuf::from(interpreter);
        let host = fs::canonicalize(&path)
            .map_err(|e| format!("interpreter {interpreter} of {}: {e}", binary.display()))?;
        found.insert(Library { path, host });
    }
    let mut seen_names = BTreeSet::new();
    let mut queue = VecDeque::from([(binary.to_path_buf(), root)]);
    while let Some((object, dynamic)) = queue.pop_front() {
        let origin = object.parent().unwrap_or(Path::new("/")).to_path_buf();
        for name in &dynamic.needed {
            if !seen_names.insert(name.clone()) {
                continue;
            }
            let mut search: Vec<PathBuf> = Vec::new();
            if dynamic.runpath.is_empty() {
                search.extend(dynamic.rpath.iter().map(|e| expand_origin(e, &origin)));
            }
            search.extend(dynamic.runpath.iter().map(|e| expand_origin(e, &origin)));
            search.extend(system.iter().cloned());
            let candidates: Vec<PathBuf> = if name.contains('/') {
                vec![PathBuf::from(name)]
            } else {
                search.iter().map(|d| d.join(name)).collect()
            };
            let mut hit = None;
            for candidate in candidates {
                let Ok(file) = fs::File::open(&candidate) else { continue };
                match parse(&file) {
                    Some(lib) if lib.machine == dynamic.machine && lib.class64 == dynamic.class64 => {
                        hit = Some((candidate, lib));
                        break;
                    }
                    _ => continue,
                }
            }
            let Some((path, lib)) = hit else {
                return Err(format!(
                    "shared library {name}, needed by {}, was not found (searched {})",
                    object.display(),
                    search.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                ));
            };
            let host = fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            found.insert(Library { path: path.clone(), host });
            queue.push_back((path, lib));
        }
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_needs_libc_and_its_interpreter() {
        let binary = ["/usr/bin/true", "/bin/true"].into_iter().map(Path::new).find(|p| p.exists()).unwrap();
        let libs = dependencies(binary).unwrap();
        let names: Vec<String> =
            libs.iter().map(|l| l.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n.starts_with("libc.so")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        assert!(libs.iter().all(|l| l.host.is_file()));
    }

    #[test]
    fn static_binaries_need_nothing_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        fs::write(&junk, b"#!/bin/sh\n").unwrap();
        assert!(dependencies(&junk).unwrap_err().contains("not a 64-bit little-endian ELF"));
    }
}
