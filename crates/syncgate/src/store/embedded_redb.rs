//! The redb engine of the embedded store: its `Backend` (one write transaction per group
//! commit, `embedded_writer.rs`) and its reads (`View` on a read transaction).

use std::ops::Bound;

use redb::{Database, Durability, ReadableTable};

use super::*;

/// The redb engine: one file, one write transaction per group commit.
pub(super) struct RedbBackend(pub(super) Database);

impl Backend for RedbBackend {
    fn view(&self) -> StoreResult<Box<dyn View + '_>> {
        Ok(Box::new(self.0.begin_read().ctx("begin read")?))
    }

    fn commit(&self, batch: &[Req], durable: bool) -> StoreResult<Vec<Answer>> {
        writer::commit_batch(&self.0, batch, if durable { Durability::Immediate } else { Durability::None })
    }
}

pub(super) fn kind_of(which: Which) -> &'static Kind {
    match which {
        Which::User => &USER,
        Which::Room => &ROOM,
    }
}

impl View for redb::ReadTransaction {
    fn page(&self, which: Which, stream: &str, after: u64, limit: usize) -> StoreResult<Page> {
        let kind = kind_of(which);
        let head =
            self.open_table(kind.heads).ctx("open heads")?.get(stream).ctx("read head")?.map_or(0, |g| g.value().0);
        let events = self.open_table(kind.events).ctx("open events")?;
        let all = (stream, 0u64)..=(stream, u64::MAX);
        let first = events.range(all).ctx("read stream")?.next().transpose().ctx("read stream")?;
        let first = first.map_or(head + 1, |(k, _)| k.value().1);
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit > 0 && after < u64::MAX {
            for r in events.range((stream, after + 1)..=(stream, u64::MAX)).ctx("read stream")?.take(limit) {
                let (k, v) = r.ctx("read stream")?;
                out.push(decode_event(k.value().1, v.value())?);
            }
        }
        Ok(Page { events: out, head, first })
    }

    fn cursor(&self, user: &str, client: &str) -> StoreResult<Option<(u64, i64)>> {
        let t = self.open_table(CURSORS).ctx("open cursors")?;
        Ok(t.get((user, client)).ctx("read cursor")?.map(|g| g.value()))
    }

    fn cursors(&self, user: &str, limit: usize) -> StoreResult<Vec<(String, u64)>> {
        let t = self.open_table(CURSORS).ctx("open cursors")?;
        let mut out = Vec::new();
        for r in t.range::<(&str, &str)>((user, "")..).ctx("scan cursors")? {
            let (k, v) = r.ctx("scan cursors")?;
            let (ku, kc) = k.value();
            if ku != user || out.len() >= limit {
                break;
            }
            out.push((kc.to_string(), v.value().0));
        }
        Ok(out)
    }

    fn idem(&self, key: &str) -> StoreResult<Option<(i64, IdemRecord)>> {
        let t = self.open_table(IDEM).ctx("open idempotency")?;
        t.get(key).ctx("read idempotency")?.map(|g| decode_idem(g.value())).transpose()
    }

    fn counts(&self) -> StoreResult<Counts> {
        let counters = self.open_table(COUNTERS).ctx("open counters")?;
        let get = |k: &str| -> StoreResult<u64> { Ok(counters.get(k).ctx("read counter")?.map_or(0, |g| g.value())) };
        let age = self.open_table(USER.age).ctx("open age index")?;
        let oldest_ts = age.first().ctx("read age index")?.map(|(k, _)| k.value().0);
        Ok(Counts { messages: get(C_MESSAGES)?, streams: get(C_STREAMS)?, cursors: get(C_CURSORS)?, oldest_ts })
    }

    fn long_streams(
        &self,
        which: Which,
        from: Option<&str>,
        max_len: u64,
    ) -> StoreResult<(Vec<String>, Option<String>)> {
        let heads = self.open_table(kind_of(which).heads).ctx("open heads")?;
        let lower = from.map_or(Bound::Unbounded, Bound::Excluded);
        let (mut long, mut seen) = (Vec::new(), 0);
        for r in heads.range::<&str>((lower, Bound::Unbounded)).ctx("scan heads")? {
            let (k, v) = r.ctx("scan heads")?;
            if v.value().1 > max_len {
                long.push(k.value().to_string());
            }
            seen += 1;
            if seen == SCAN_PAGE {
                return Ok((long, Some(k.value().to_string())));
            }
        }
        Ok((long, None))
    }

    fn old_cursors(&self, from: Option<&CursorKey>, cutoff: i64) -> StoreResult<(Vec<CursorKey>, Option<CursorKey>)> {
        let cursors = self.open_table(CURSORS).ctx("open cursors")?;
        let lower = from.map_or(Bound::Unbounded, |(u, c)| Bound::Excluded((u.as_str(), c.as_str())));
        let (mut old, mut seen) = (Vec::new(), 0);
        for r in cursors.range::<(&str, &str)>((lower, Bound::Unbounded)).ctx("scan cursors")? {
            let (k, v) = r.ctx("scan cursors")?;
            let (u, c) = k.value();
            if v.value().1 < cutoff {
                old.push((u.to_string(), c.to_string()));
            }
            seen += 1;
            if seen == SCAN_PAGE {
                return Ok((old, Some((u.to_string(), c.to_string()))));
            }
        }
        Ok((old, None))
    }
}
