//! The embedded store's file format: the encoding of its values, creating a new file,
//! checking the format of an existing one and converting a format 1 file (see the layout in
//! `embedded.rs`).

use bytes::Bytes;
use redb::{Database, ReadableTable};

use super::writer::Tables;
use super::{Ctx, EMPTY, FILE_NAME, FORMAT, META, ROOM, USER};
use crate::store::{IdemRecord, NewEvent, StoreError, StoreResult, StoredEvent};

/// Creates the tables of a new file, converts a format 1 file, and loads (or, on a new
/// file, draws) the epoch.
pub(super) fn init(db: &Database) -> StoreResult<String> {
    let mut txn = db.begin_write().ctx("begin init")?;
    let (format, epoch) = {
        let meta = txn.open_table(META).ctx("open meta")?;
        let format = meta.get("format").ctx("read format")?.map(|g| g.value().to_string());
        let epoch = meta.get("epoch").ctx("read epoch")?.map(|g| g.value().to_string());
        (format, epoch)
    };
    match format.as_deref() {
        None | Some(FORMAT) => {}
        Some("1") => {
            txn.set_durability(redb::Durability::Immediate);
            let started = std::time::Instant::now();
            let streams = migrate_v1(&txn)?;
            tracing::info!(
                streams,
                ms = started.elapsed().as_millis() as u64,
                "converted {FILE_NAME} from format 1 to {FORMAT}"
            );
        }
        Some(f) => {
            return Err(StoreError::Internal(format!("{FILE_NAME} has format {f}, this build reads 1 and {FORMAT}")))
        }
    }
    Tables::open(&txn)?;
    let epoch = {
        let mut meta = txn.open_table(META).ctx("open meta")?;
        meta.insert("format", FORMAT).ctx("write format")?;
        match epoch {
            Some(e) => e,
            None => {
                let e = format!("{:08x}", rand::random::<u32>());
                meta.insert("epoch", e.as_str()).ctx("write epoch")?;
                e
            }
        }
    };
    txn.commit().ctx("commit init")?;
    Ok(epoch)
}

/// Format 1 to 2: each stream's head gets the ts of its first event, every non-empty stream
/// an age index entry; the old heads and the per-event time index are dropped. Returns the
/// number of streams converted.
fn migrate_v1(txn: &redb::WriteTransaction) -> StoreResult<u64> {
    let mut streams = 0;
    for kind in [&USER, &ROOM] {
        {
            let old = txn.open_table(kind.v1_heads).ctx("open format 1 heads")?;
            let events = txn.open_table(kind.events).ctx("open events")?;
            let mut heads = txn.open_table(kind.heads).ctx("open heads")?;
            let mut age = txn.open_table(kind.age).ctx("open age index")?;
            for r in old.iter().ctx("read format 1 heads")? {
                let (k, v) = r.ctx("read format 1 heads")?;
                let (stream, (head, count)) = (k.value(), v.value());
                let oldest = first_ts(&events, stream)?.unwrap_or(EMPTY);
                heads.insert(stream, (head, count, oldest)).ctx("write head")?;
                if oldest != EMPTY {
                    age.insert((oldest, stream), ()).ctx("write age index")?;
                }
                streams += 1;
            }
        }
        txn.delete_table(kind.v1_heads).ctx("drop format 1 heads")?;
        txn.delete_table(kind.v1_by_time).ctx("drop format 1 time index")?;
    }
    Ok(streams)
}

/// The ts of the first event of `stream`, if it has any.
pub(super) fn first_ts(
    events: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    stream: &str,
) -> StoreResult<Option<i64>> {
    let first = events.range((stream, 0u64)..=(stream, u64::MAX)).ctx("read stream")?.next();
    match first.transpose().ctx("read stream")? {
        Some((_, v)) => Ok(Some(event_times(v.value())?.0)),
        None => Ok(None),
    }
}

// Event value: ts i64 | expires_at i64 | kind length u32 | kind | data (little endian).
// Hand-written: three fixed fields and two byte strings do not need a serde format.
pub(super) fn encode_event(ev: &NewEvent, expires: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + ev.kind.len() + ev.data.len());
    v.extend_from_slice(&ev.ts.to_le_bytes());
    v.extend_from_slice(&expires.to_le_bytes());
    v.extend_from_slice(&(ev.kind.len() as u32).to_le_bytes());
    v.extend_from_slice(ev.kind.as_bytes());
    v.extend_from_slice(&ev.data);
    v
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("corrupt {what} record in {FILE_NAME}"))
}

pub(super) fn le8(v: &[u8], at: usize) -> Option<[u8; 8]> {
    v.get(at..at + 8)?.try_into().ok()
}

/// (ts, expires_at) of an encoded event.
pub(super) fn event_times(v: &[u8]) -> StoreResult<(i64, i64)> {
    match (le8(v, 0), le8(v, 8)) {
        (Some(t), Some(e)) => Ok((i64::from_le_bytes(t), i64::from_le_bytes(e))),
        _ => Err(corrupt("event")),
    }
}

pub(super) fn decode_event(seq: u64, v: &[u8]) -> StoreResult<StoredEvent> {
    let (ts, _) = event_times(v)?;
    let len = v.get(16..20).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let kind_end = 20 + len.ok_or_else(|| corrupt("event"))? as usize;
    let kind = v.get(20..kind_end).and_then(|k| std::str::from_utf8(k).ok());
    let kind = kind.ok_or_else(|| corrupt("event"))?.to_string();
    Ok(StoredEvent { seq, kind, data: Bytes::copy_from_slice(&v[kind_end..]), ts })
}

// Idempotency value: created_ms i64 | request_hash u64 | status u16 | body.
pub(super) fn encode_idem(created: i64, r: &IdemRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + r.body.len());
    v.extend_from_slice(&created.to_le_bytes());
    v.extend_from_slice(&r.request_hash.to_le_bytes());
    v.extend_from_slice(&r.status.to_le_bytes());
    v.extend_from_slice(&r.body);
    v
}

pub(super) fn decode_idem(v: &[u8]) -> StoreResult<(i64, IdemRecord)> {
    let status = v.get(16..18).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes);
    match (le8(v, 0), le8(v, 8), status) {
        (Some(c), Some(h), Some(status)) => Ok((
            i64::from_le_bytes(c),
            IdemRecord { request_hash: u64::from_le_bytes(h), status, body: Bytes::copy_from_slice(&v[18..]) },
        )),
        _ => Err(corrupt("idempotency")),
    }
}
