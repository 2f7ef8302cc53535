//! Tests of the outbox: the delivery rule, flow control and direct writes.

use super::*;

fn conn(limit: usize, cursor: u64) -> Conn {
    let c = Conn::new(1, "u".into(), None, u64::MAX, limit, StreamPos::resume_from(cursor));
    // Pretend the catch-up read found nothing.
    c.apply_fill(&StreamRef::User, cursor, (cursor + 1, cursor), vec![], true);
    c
}

fn f(n: u64) -> Arc<Event> {
    Arc::new(Event::new(
        n.to_string(),
        crate::event::StreamName::User,
        "t",
        Bytes::new(),
        0,
        crate::event::Priority::Normal,
    ))
}

/// The ids of the queued events (replies as "reply", pings as "ping").
fn drain(c: &Conn) -> Vec<String> {
    let mut v = Vec::new();
    c.take(&mut v, usize::MAX);
    v.into_iter()
        .map(|o| match o {
            Outgoing::Event(e) => e.id.to_string(),
            Outgoing::Reply(_) => "reply".into(),
            Outgoing::Ping => "ping".into(),
            Outgoing::Pong(_) => "pong".into(),
            Outgoing::Raw(_) => "raw".into(),
        })
        .collect()
}

fn ids(v: &[u64]) -> Vec<String> {
    v.iter().map(u64::to_string).collect()
}

#[test]
fn in_order_duplicates_and_gaps() {
    let c = conn(10, 5);
    assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false, true), Offer::Queued);
    assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false, true), Offer::Skipped);
    assert_eq!(c.offer(&StreamRef::User, 8, &f(8), false, true), Offer::Skipped);
    assert_eq!(c.next_fill(), Some((StreamRef::User, 6, 4)));
    // A live 7 arriving while behind is not queued: the fill will bring it.
    assert_eq!(c.offer(&StreamRef::User, 7, &f(7), false, true), Offer::Skipped);
    c.apply_fill(&StreamRef::User, 6, (1, 8), vec![(7, f(7)), (8, f(8))], true);
    assert_eq!(c.next_fill(), None);
    assert_eq!(c.offer(&StreamRef::User, 9, &f(9), false, true), Offer::Queued);
    assert_eq!(drain(&c), ids(&[6, 7, 8, 9]));
}

#[test]
fn fill_that_misses_a_concurrent_event_stays_behind() {
    let c = Conn::new(1, "u".into(), None, u64::MAX, 10, StreamPos::resume_from(0));
    // Event 3 is offered while the catch-up read (which saw 1..2) is in flight.
    c.offer(&StreamRef::User, 3, &f(3), false, true);
    c.apply_fill(&StreamRef::User, 0, (1, 2), vec![(1, f(1)), (2, f(2))], true);
    assert_eq!(c.next_fill(), Some((StreamRef::User, 2, 3)));
    c.apply_fill(&StreamRef::User, 2, (1, 3), vec![(3, f(3))], true);
    assert_eq!(c.next_fill(), None);
    assert_eq!(drain(&c), ids(&[1, 2, 3]));
}

#[test]
fn holes_left_by_expired_messages_are_skipped_not_waited_for() {
    let c = Conn::new(1, "u".into(), None, u64::MAX, 10, StreamPos::resume_from(0));
    // 2 expired (own ttl); 5 was offered live but expired before the read.
    c.offer(&StreamRef::User, 5, &f(5), false, true);
    let trimmed = c.apply_fill(&StreamRef::User, 0, (1, 5), vec![(1, f(1)), (3, f(3)), (4, f(4))], true);
    assert_eq!(trimmed, 2);
    assert_eq!(c.next_fill(), None, "no endless catch-up");
    assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false, true), Offer::Queued);
    assert_eq!(drain(&c), ids(&[1, 3, 4, 6]));
}

#[test]
fn recheck_reads_the_store_once_even_without_a_later_event() {
    let c = conn(10, 3);
    assert_eq!(c.next_fill(), None);
    c.recheck(Some(&StreamRef::User));
    assert_eq!(c.next_fill(), Some((StreamRef::User, 3, 5)));
    // The missed event 4 is in the store; the read brings it.
    c.apply_fill(&StreamRef::User, 3, (1, 4), vec![(4, f(4))], true);
    assert_eq!(c.next_fill(), None);
    assert_eq!(drain(&c), ids(&[4]));
}

#[test]
fn trimmed_range_is_reported() {
    let c = Conn::new(1, "u".into(), None, u64::MAX, 10, StreamPos::resume_from(2));
    let trimmed = c.apply_fill(&StreamRef::User, 2, (6, 6), vec![(6, f(6))], true);
    assert_eq!(trimmed, 3);
    assert_eq!(drain(&c), ids(&[6]));
}

#[test]
fn overflow_closes_with_4008_and_drops_queue() {
    let c = conn(2, 0);
    assert_eq!(c.push(Outgoing::Event(f(1))), Offer::Queued);
    assert_eq!(c.push(Outgoing::Event(f(2))), Offer::Queued);
    assert_eq!(c.push(Outgoing::Event(f(3))), Offer::Overflow);
    let mut v = Vec::new();
    let close = c.take(&mut v, 10).unwrap();
    assert_eq!(close.code, 4008);
    assert!(v.is_empty());
}

#[test]
fn shutdown_close_flushes_first() {
    let c = conn(4, 0);
    c.push(Outgoing::Event(f(1)));
    c.close(close::SHUTDOWN);
    assert_eq!(c.closing().map(|r| r.code), Some(1001));
    assert_eq!(drain(&c), ids(&[1]));
}

#[test]
fn fills_take_at_most_half_and_replies_have_headroom() {
    // A replay of 1000 events to a reader that drains one item at a time while it also
    // asks for things: it is never closed, and the queue never passes half on fills.
    let limit = 16;
    let c = Conn::new(1, "u".into(), None, u64::MAX, limit, StreamPos::resume_from(0));
    let mut next = 1;
    let mut got = Vec::new();
    while next <= 1000 {
        if let Some((_, after, room)) = c.next_fill() {
            assert!(room <= limit / 2);
            let evs: Vec<_> = (after + 1..=after + room as u64).map(|s| (s, f(s))).collect();
            c.apply_fill(&StreamRef::User, after, (1, 1000), evs, false);
            next = after + room as u64 + 1;
        }
        // Replies arrive while the queue is half full of replayed events.
        for _ in 0..limit / 2 {
            assert_eq!(c.reply(Bytes::from_static(b"{}")), Offer::Queued);
        }
        let mut one = Vec::new();
        while !c.out.lock().items.is_empty() {
            one.clear();
            c.take(&mut one, 1);
            if let Some(Outgoing::Event(e)) = one.first() {
                got.push(e.id.to_string());
            }
        }
    }
    assert!(c.closing().is_none());
    assert_eq!(got.len(), 1000);
}

/// A socket that takes `room` more bytes, counting each item as `item_len` bytes.
struct Socket {
    room: Mutex<usize>,
    item_len: usize,
    written: Mutex<Vec<String>>,
}

impl Direct for Socket {
    fn try_send(&self, item: &Outgoing) -> Sent {
        let mut room = self.room.lock();
        let name = match item {
            Outgoing::Event(e) => e.id.to_string(),
            _ => "other".into(),
        };
        if *room == 0 {
            return Sent::Nothing;
        }
        let n = self.item_len.min(*room);
        *room -= n;
        self.written.lock().push(name);
        if n == self.item_len {
            Sent::All
        } else {
            Sent::Part(Bytes::from(vec![b'r'; self.item_len - n]))
        }
    }
}

#[test]
fn direct_writes_keep_order_with_partial_writes_and_the_task() {
    let c = conn(8, 0);
    let sock = Arc::new(Socket { room: Mutex::new(25), item_len: 10, written: Mutex::new(vec![]) });
    c.set_direct(sock.clone());
    // 1 and 2 go straight into the socket; 3 only in part (its rest is queued first);
    // 4 and 5 are queued behind it, not written around it.
    assert_eq!(c.offer(&StreamRef::User, 1, &f(1), false, true), Offer::Sent);
    assert_eq!(c.offer(&StreamRef::User, 2, &f(2), false, true), Offer::Sent);
    assert_eq!(c.offer(&StreamRef::User, 3, &f(3), false, true), Offer::Queued);
    *sock.room.lock() = 1000;
    assert_eq!(c.offer(&StreamRef::User, 4, &f(4), false, true), Offer::Queued);
    assert_eq!(c.push(Outgoing::Event(f(50))), Offer::Queued, "a transient event too");
    assert_eq!(*sock.written.lock(), ids(&[1, 2, 3]));
    // The task takes the queue: until it has written it, nothing goes direct.
    let mut taken = Vec::new();
    c.take(&mut taken, 10);
    assert!(matches!(taken[0], Outgoing::Raw(ref r) if r.len() == 5));
    assert_eq!(taken.len(), 3);
    assert_eq!(c.offer(&StreamRef::User, 5, &f(5), false, true), Offer::Queued);
    c.write_done();
    assert_eq!(drain(&c), ids(&[5]));
    c.write_done();
    assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false, true), Offer::Sent);
    // Once the task stops direct writes (closing), everything is queued for it.
    c.stop_direct();
    assert_eq!(c.offer(&StreamRef::User, 7, &f(7), false, true), Offer::Queued);
    assert_eq!(*sock.written.lock(), ids(&[1, 2, 3, 6]));
}

#[test]
fn a_close_that_drops_the_queue_keeps_the_rest_of_a_begun_frame() {
    let c = conn(8, 0);
    let sock = Arc::new(Socket { room: Mutex::new(4), item_len: 10, written: Mutex::new(vec![]) });
    c.set_direct(sock);
    assert_eq!(c.offer(&StreamRef::User, 1, &f(1), false, true), Offer::Queued);
    assert_eq!(c.offer(&StreamRef::User, 2, &f(2), false, true), Offer::Queued);
    c.close(close::SLOW);
    assert_eq!(drain(&c), vec!["raw".to_string()], "the frame is completed, the rest dropped");
}

#[test]
fn live_events_past_the_limit_close_with_4008_but_control_items_fit_above_it() {
    let c = conn(4, 0);
    for i in 1..=4 {
        assert_eq!(c.offer(&StreamRef::User, i, &f(i), false, true), Offer::Queued);
    }
    assert_eq!(c.push(Outgoing::Ping), Offer::Queued, "a ping fits in the headroom");
    assert_eq!(c.offer(&StreamRef::User, 5, &f(5), false, true), Offer::Overflow);
    assert_eq!(c.closing(), Some(close::SLOW));
    assert!(drain(&c).is_empty(), "a slow reader's queue is dropped");
}

#[test]
fn a_fill_never_takes_the_queue_past_half_with_live_events_queued_meanwhile() {
    // A room catches up while the user stream is live: live events fill the queue while the
    // room's read is in flight; the read's events then queue only up to half the queue, and
    // the rest comes in later fills, in order.
    let limit = 64;
    let c = conn(limit, 0);
    assert!(c.add_room("r".into(), Some(StreamPos::resume_from(0))));
    let (stream, after, room) = c.next_fill().expect("the room is behind");
    assert_eq!((stream.clone(), after, room), (StreamRef::Room("r".into()), 0, limit / 2));
    for s in 1..=limit as u64 {
        assert_eq!(c.offer(&StreamRef::User, s, &f(s), false, true), Offer::Queued);
    }
    let evs: Vec<_> = (1..=room as u64).map(|s| (s, f(1000 + s))).collect();
    c.apply_fill(&stream, 0, (1, room as u64), evs, true);
    assert!(c.out.lock().items.len() <= limit, "{} queued", c.out.lock().items.len());
    let mut got = drain(&c);
    assert_eq!(got.len(), limit, "only the live events: the room's wait for room in the queue");
    // Later fills bring the room's events, once each and in order.
    while let Some((stream, after, room)) = c.next_fill() {
        let evs: Vec<_> = (after + 1..=32u64.min(after + room as u64)).map(|s| (s, f(1000 + s))).collect();
        c.apply_fill(&stream, after, (1, 32), evs, true);
        got.extend(drain(&c));
    }
    let room_ids: Vec<String> = got.into_iter().filter(|id| id.len() == 4).collect();
    assert_eq!(room_ids, (1001..=1032).map(|n: u64| n.to_string()).collect::<Vec<_>>());
}
