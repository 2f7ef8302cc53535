//! What opens an embedded store: its options, the sync policy, and the engine, chosen for a
//! data dir (`Engine::resolve`) and checked against what the dir already holds
//! (`refuse_other_engine`).
//!
//! Must never: let a data dir holding one engine's store be opened with the other (it would
//! start an empty store, with a new epoch, beside the streams it holds).

use std::path::PathBuf;

use super::{FILE_NAME, LSM_DIR_NAME};
use crate::store::{StoreError, StoreResult};

/// When a group commit is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Each group commit is fsynced before any of its requests is answered (redb
    /// `Durability::Immediate`).
    #[default]
    Always,
    /// Commits are not written durably (redb `Durability::None`), except one per second and
    /// at close: fast, but any crash, of the process as well as of the machine, loses what
    /// was answered since the last durable commit. For tests and benchmarks.
    Never,
}

/// Which embedded storage engine holds the data dir's streams (`store.engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// The default: the engine of the data already in the data dir (`redb` if it holds
    /// `syncgate.redb`), and `lsm` for a data dir without a store. See [`Engine::resolve`].
    #[default]
    Auto,
    /// redb: copy-on-write B-trees in one file, `syncgate.redb`.
    Redb,
    /// fjall: a log-structured merge tree in the directory `syncgate.lsm` (a journal that
    /// every commit appends to, memtables, sorted segment files merged in the background).
    Lsm,
}

impl Engine {
    /// The engine that opens `dir`: an explicit choice as it is; `Auto` keeps a data dir's
    /// redb store on redb (stores made before `lsm` became the default), and picks `lsm`
    /// for everything else, a new data dir included.
    pub fn resolve(self, dir: &std::path::Path) -> Engine {
        match self {
            Engine::Auto if dir.join(FILE_NAME).exists() && !dir.join(LSM_DIR_NAME).exists() => Engine::Redb,
            Engine::Auto => Engine::Lsm,
            chosen => chosen,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Redb => "redb",
            Engine::Lsm => "lsm",
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct EmbeddedOptions {
    /// Data directory; created if missing. Holds `syncgate.redb` or `syncgate.lsm`.
    pub dir: PathBuf,
    #[serde(default)]
    pub engine: Engine,
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Most events applied in one group commit.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Bytes of the file's pages kept in memory (`store.cache_bytes`).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
}

fn default_cache_bytes() -> usize {
    64 << 20
}

fn default_max_batch() -> usize {
    1024
}

impl EmbeddedOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            dir: dir.into(),
            engine: Engine::Auto,
            fsync: FsyncPolicy::Always,
            max_batch: default_max_batch(),
            cache_bytes: default_cache_bytes(),
        }
    }
}

/// A data dir holds one engine's data: opening it with the other engine would start an empty
/// store (and a new epoch) beside the streams it holds, so that is refused.
pub fn refuse_other_engine(dir: &std::path::Path, engine: Engine) -> StoreResult<()> {
    let (other, name) = match engine.resolve(dir) {
        Engine::Redb => (LSM_DIR_NAME, "lsm"),
        _ => (FILE_NAME, "redb"),
    };
    if dir.join(other).exists() {
        let setting = match engine {
            Engine::Auto => format!("auto, which picks {} here", engine.resolve(dir).name()),
            chosen => chosen.name().to_string(),
        };
        return Err(StoreError::Internal(format!(
            "data dir {} holds a store of engine {name} ({other}); store.engine is {setting}: set store.engine = \
             \"{name}\", or move {other} away to start an empty store (there is no conversion between engines)",
            dir.display()
        )));
    }
    Ok(())
}
