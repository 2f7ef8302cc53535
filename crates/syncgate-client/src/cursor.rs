//! Where a [`crate::Client`] keeps its checkpoints: the last handled event id per stream,
//! under keys like `syncgate:CLIENT_ID:user` or `syncgate:CLIENT_ID:room:NAME`.
//!
//! Owns: the [`CursorStore`] trait and its two implementations, in memory and in a JSON file.
//!
//! Must never: report a checkpoint as saved before it is (the file store writes a temporary
//! file and renames it over the old one, so a crash leaves the old or the new map, not half).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A key-value store for checkpoints. Calls are short and synchronous.
pub trait CursorStore: Send + Sync + 'static {
    fn load(&self, key: &str) -> std::io::Result<Option<String>>;
    fn save(&self, key: &str, id: &str) -> std::io::Result<()>;
    fn remove(&self, key: &str) -> std::io::Result<()>;
}

/// Checkpoints that last as long as the process.
#[derive(Default)]
pub struct MemoryCursorStore {
    map: Mutex<BTreeMap<String, String>>,
}

impl MemoryCursorStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl CursorStore for MemoryCursorStore {
    fn load(&self, key: &str) -> std::io::Result<Option<String>> {
        Ok(lock(&self.map).get(key).cloned())
    }
    fn save(&self, key: &str, id: &str) -> std::io::Result<()> {
        lock(&self.map).insert(key.to_string(), id.to_string());
        Ok(())
    }
    fn remove(&self, key: &str) -> std::io::Result<()> {
        lock(&self.map).remove(key);
        Ok(())
    }
}

/// Checkpoints in one JSON file (an object of key to id), rewritten on every save.
pub struct FileCursorStore {
    path: PathBuf,
    map: Mutex<BTreeMap<String, String>>,
}

impl FileCursorStore {
    /// Opens (or starts) the file at `path`; a missing file is an empty store.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(FileCursorStore { path, map: Mutex::new(map) })
    }

    fn write(&self, map: &BTreeMap<String, String>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(map).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl CursorStore for FileCursorStore {
    fn load(&self, key: &str) -> std::io::Result<Option<String>> {
        Ok(lock(&self.map).get(key).cloned())
    }
    fn save(&self, key: &str, id: &str) -> std::io::Result<()> {
        let mut map = lock(&self.map);
        map.insert(key.to_string(), id.to_string());
        self.write(&map)
    }
    fn remove(&self, key: &str) -> std::io::Result<()> {
        let mut map = lock(&self.map);
        if map.remove(key).is_some() {
            self.write(&map)?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `id` is a transient event's (`persist: false`, broadcasts): `EPOCH.tN`, two
/// dot-separated parts, the second starting with `t` (docs/protocol.md, "Event ids"). Such
/// an id is in no stream: the server refuses it as `since` and in `ack`, so it is never a
/// checkpoint.
pub(crate) fn is_transient(id: &str) -> bool {
    let mut parts = id.split('.');
    matches!((parts.next(), parts.next(), parts.next()), (Some(_), Some(n), None) if n.starts_with('t'))
}

/// Whether `id` is at or before `checkpoint` in the same stream (ids are `EPOCH.TAG.SEQ`;
/// transient ids are in no stream and never count as handled).
pub(crate) fn is_handled(id: &str, checkpoint: Option<&str>) -> bool {
    fn parse(id: &str) -> Option<(&str, u64)> {
        let (stream, seq) = id.rsplit_once('.')?;
        if !stream.contains('.') {
            return None;
        }
        Some((stream, seq.parse().ok()?))
    }
    match (parse(id), checkpoint.and_then(parse)) {
        (Some((s1, a)), Some((s2, b))) => s1 == s2 && a <= b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_compares_sequence_numbers_within_a_stream() {
        assert!(is_handled("e.1.9", Some("e.1.10")));
        assert!(is_handled("e.1.10", Some("e.1.10")));
        assert!(!is_handled("e.1.11", Some("e.1.10")));
        assert!(!is_handled("e.2.3", Some("e.1.10")));
        assert!(!is_handled("e.t5", Some("e.1.10")));
        assert!(!is_handled("e.1.1", None));
    }

    #[test]
    fn transient_ids_are_told_apart_from_stream_ids() {
        for id in ["e77ca684.t1", "e77ca684.t42"] {
            assert!(is_transient(id), "{id}");
        }
        for id in ["e77ca684.374535.3", "e77ca684.000074.1", "e77ca684.t1.2", "e77ca684", ""] {
            assert!(!is_transient(id), "{id}");
        }
    }

    #[test]
    fn file_store_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("syncgate-cursor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cursors.json");
        let _ = std::fs::remove_file(&path);
        let s = FileCursorStore::open(&path).unwrap();
        s.save("syncgate:a:user", "e.1.4").unwrap();
        s.save("syncgate:a:room:x", "e.2.1").unwrap();
        s.remove("syncgate:a:room:x").unwrap();
        let again = FileCursorStore::open(&path).unwrap();
        assert_eq!(again.load("syncgate:a:user").unwrap().as_deref(), Some("e.1.4"));
        assert_eq!(again.load("syncgate:a:room:x").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
