//! Test listings by artifact digest, kept across runs: an unchanged test binary is not asked
//! for its cases again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::run::Listed;

/// One file per digest, a line per case: `test <name>` or `ignored <name>`.
#[derive(Debug)]
pub struct ListingCache {
    dir: PathBuf,
    memory: BTreeMap<String, Vec<Listed>>,
}

impl ListingCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, memory: BTreeMap::new() }
    }

    /// The listing of an artifact with this digest (hex), asking `list` only if unknown.
    pub fn get(
        &mut self,
        digest: &str,
        list: impl FnOnce() -> anyhow::Result<Vec<Listed>>,
    ) -> anyhow::Result<Vec<Listed>> {
        if let Some(cases) = self.memory.get(digest) {
            return Ok(cases.clone());
        }
        let path = self.dir.join(digest);
        let cases = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(flag, name)| Listed { name: name.to_owned(), ignored: flag == "ignored" })
                .collect(),
            Err(_) => {
                let cases = list()?;
                let text: String = cases
                    .iter()
                    .map(|c| format!("{} {}\n", if c.ignored { "ignored" } else { "test" }, c.name))
                    .collect();
                let _ = std::fs::create_dir_all(&self.dir);
                let temp = path.with_extension(std::process::id().to_string());
                if std::fs::write(&temp, text).is_ok() {
                    let _ = std::fs::rename(&temp, &path);
                }
                cases
            }
        };
        self.memory.insert(digest.to_owned(), cases.clone());
        Ok(cases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_asked_for_once_and_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let listed = vec![
            Listed { name: "a::b".into(), ignored: false },
            Listed { name: "c d".into(), ignored: true },
        ];
        let mut cache = ListingCache::new(dir.path().join("l"));
        assert_eq!(cache.get("ab12", || Ok(listed.clone())).unwrap(), listed);
        assert_eq!(cache.get("ab12", || panic!("asked twice")).unwrap(), listed);
        let mut again = ListingCache::new(dir.path().join("l"));
        assert_eq!(again.get("ab12", || panic!("not kept on disk")).unwrap(), listed);
    }
}
