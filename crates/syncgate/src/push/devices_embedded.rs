//! Push registrations on one node: a redb file (`push.redb`) beside the embedded store.
//!
//! Owns: the table `push_devices (user, client_id) -> Registration JSON`. A file of its own
//! keeps registrations out of the stream store's writer thread and group commit: they are
//! rare writes, each its own transaction, run on the blocking pool.
//!
//! Must never: run a redb call on an async worker thread, or answer a write before its
//! transaction is committed durably.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};

use super::devices::{victims, Devices, Registration};
use crate::store::{StoreError, StoreResult};

pub const FILE_NAME: &str = "push.redb";
const TABLE: TableDefinition<'static, (&'static str, &'static str), &'static [u8]> =
    TableDefinition::new("push_devices");

pub struct EmbeddedDevices {
    db: Arc<Database>,
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

impl EmbeddedDevices {
    /// Opens (or creates) `push.redb` in `dir`.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        let db = Database::create(dir.join(FILE_NAME)).map_err(internal)?;
        let tx = db.begin_write().map_err(internal)?;
        tx.open_table(TABLE).map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(EmbeddedDevices { db: Arc::new(db) })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(internal)?
    }
}

fn decode(bytes: &[u8]) -> StoreResult<Registration> {
    serde_json::from_slice(bytes).map_err(internal)
}

fn list_in(db: &Database, user: &str) -> StoreResult<Vec<Registration>> {
    let tx = db.begin_read().map_err(internal)?;
    let t = tx.open_table(TABLE).map_err(internal)?;
    let mut out = Vec::new();
    for row in t.range((user, "")..).map_err(internal)? {
        let (k, v) = row.map_err(internal)?;
        if k.value().0 != user {
            break;
        }
        out.push(decode(v.value())?);
    }
    Ok(out)
}

#[async_trait]
impl Devices for EmbeddedDevices {
    async fn put(&self, user: &str, reg: Registration, max: usize) -> StoreResult<Vec<String>> {
        let user = user.to_string();
        self.run(move |db| {
            let value = serde_json::to_vec(&reg).map_err(internal)?;
            let tx = db.begin_write().map_err(internal)?;
            let dropped = {
                let mut t = tx.open_table(TABLE).map_err(internal)?;
                let mut existing = Vec::new();
                for row in t.range((user.as_str(), "")..).map_err(internal)? {
                    let (k, v) = row.map_err(internal)?;
                    if k.value().0 != user {
                        break;
                    }
                    existing.push((k.value().1.to_string(), decode(v.value())?.updated_at));
                }
                let dropped = victims(existing.iter().map(|(c, t)| (c.as_str(), *t)), &reg.client_id, max);
                for c in &dropped {
                    t.remove((user.as_str(), c.as_str())).map_err(internal)?;
                }
                t.insert((user.as_str(), reg.client_id.as_str()), value.as_slice()).map_err(internal)?;
                dropped
            };
            tx.commit().map_err(internal)?;
            Ok(dropped)
        })
        .await
    }

    async fn get(&self, user: &str, client_id: &str) -> StoreResult<Option<Registration>> {
        let (user, client) = (user.to_string(), client_id.to_string());
        self.run(move |db| {
            let tx = db.begin_read().map_err(internal)?;
            let t = tx.open_table(TABLE).map_err(internal)?;
            match t.get((user.as_str(), client.as_str())).map_err(internal)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, user: &str) -> StoreResult<Vec<Registration>> {
        let user = user.to_string();
        self.run(move |db| list_in(db, &user)).await
    }

    async fn remove(&self, user: &str, client_id: &str) -> StoreResult<bool> {
        let (user, client) = (user.to_string(), client_id.to_string());
        self.run(move |db| {
            let tx = db.begin_write().map_err(internal)?;
            let removed = {
                let mut t = tx.open_table(TABLE).map_err(internal)?;
                let r = t.remove((user.as_str(), client.as_str())).map_err(internal)?;
                r.is_some()
            };
            tx.commit().map_err(internal)?;
            Ok(removed)
        })
        .await
    }

    async fn remove_if(&self, user: &str, client_id: &str, address: &str) -> StoreResult<bool> {
        let (user, client, address) = (user.to_string(), client_id.to_string(), address.to_string());
        self.run(move |db| {
            let tx = db.begin_write().map_err(internal)?;
            let removed = {
                let mut t = tx.open_table(TABLE).map_err(internal)?;
                let current = match t.get((user.as_str(), client.as_str())).map_err(internal)? {
                    Some(v) => Some(decode(v.value())?),
                    None => None,
                };
                match current {
                    Some(r) if r.address() == address => {
                        t.remove((user.as_str(), client.as_str())).map_err(internal)?;
                        true
                    }
                    _ => false,
                }
            };
            tx.commit().map_err(internal)?;
            Ok(removed)
        })
        .await
    }
}
