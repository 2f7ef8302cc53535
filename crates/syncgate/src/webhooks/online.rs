//! Who is marked online for webhooks, across the deployment: the one node that marks a user
//! online sends `user.online`, the one that clears the mark sends `user.offline`.
//!
//! Owns: the marks (`OnlineMarks`: local memory on one node, a Redis key per user in a
//! cluster). Must never: say "newly online" or "newly offline" to two callers for one
//! transition (SET NX and DEL are atomic in Redis; a mutex here).

use std::collections::HashSet;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::store::redis::RedisConn;

#[async_trait]
pub trait OnlineMarks: Send + Sync {
    /// Marks `user` online; true when it was not marked (this caller sends user.online).
    async fn mark(&self, user: &str) -> Result<bool, String>;
    /// Clears the mark; true when it was set (this caller sends user.offline).
    async fn clear(&self, user: &str) -> Result<bool, String>;
}

/// One node: a set in memory (bounded by the users with connections, plus those within
/// their offline grace).
#[derive(Default)]
pub struct LocalMarks(Mutex<HashSet<String>>);

#[async_trait]
impl OnlineMarks for LocalMarks {
    async fn mark(&self, user: &str) -> Result<bool, String> {
        Ok(self.0.lock().insert(user.to_string()))
    }
    async fn clear(&self, user: &str) -> Result<bool, String> {
        Ok(self.0.lock().remove(user))
    }
}

/// A cluster: `{prefix}:wh:on:{user}` keys.
pub struct RedisMarks {
    conn: RedisConn,
    prefix: String,
}

impl RedisMarks {
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        RedisMarks { conn, prefix: format!("{prefix}:wh:on:") }
    }
}

#[async_trait]
impl OnlineMarks for RedisMarks {
    async fn mark(&self, user: &str) -> Result<bool, String> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}{user}", self.prefix))
            .arg("1")
            .arg("NX")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }
    async fn clear(&self, user: &str) -> Result<bool, String> {
        let mut c = self.conn.clone();
        let n: i64 = redis::cmd("DEL")
            .arg(format!("{}{user}", self.prefix))
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n == 1)
    }
}
