//! Unit tests of the hub's delivery paths.

use super::*;
use crate::event::{Priority, StreamName};
use crate::streams::outbox::{Direct, Sent};
use bytes::Bytes;

/// A socket that takes everything.
struct Open;
impl Direct for Open {
    fn try_send(&self, _: &Outgoing) -> Sent {
        Sent::All
    }
}

fn ev() -> Arc<Event> {
    Arc::new(Event::new("1".into(), StreamName::Room("r".into()), "t", Bytes::new(), 0, Priority::Normal))
}

/// Drains the queue as the connection's task would; returns how many items it held.
fn drain(c: &Conn) -> usize {
    let mut v = Vec::new();
    c.take(&mut v, usize::MAX);
    c.write_done();
    v.len()
}

#[test]
fn large_fanouts_write_directly_while_quiet_and_queue_while_busy() {
    let hub = Hub::new(1000, 1000, Arc::new(Metrics::new()));
    let conns: Vec<Arc<Conn>> = (0..pace::LARGE as u64)
        .map(|i| {
            let c = Arc::new(Conn::new(i, "u".into(), None, u64::MAX, 16, StreamPos::resume_from(0)));
            c.set_direct(Arc::new(Open));
            hub.admit(c.clone()).unwrap();
            assert!(hub.join(&c, "big", None));
            if i < 3 {
                assert!(hub.join(&c, "small", None));
            }
            c
        })
        .collect();
    let n = conns.len();
    let queued = |conns: &[Arc<Conn>]| conns.iter().map(|c| drain(c)).sum::<usize>();
    assert_eq!(hub.deliver_room("big", None, &ev(), None), n);
    assert_eq!(queued(&conns), 0, "a quiet room's fan-out goes straight into idle sockets");
    assert_eq!(hub.deliver_all(&ev()), n);
    assert_eq!(queued(&conns), 0, "so does a quiet broadcast");
    // While a room (or broadcasting) is busy, a large fan-out queues for the tasks.
    hub.rooms.get("big").unwrap().pace.make_busy();
    hub.all_pace.make_busy();
    assert_eq!(hub.deliver_room("big", None, &ev(), None), n);
    assert_eq!(queued(&conns), n, "a busy room's fan-out queues");
    assert_eq!(hub.deliver_all(&ev()), n);
    assert_eq!(queued(&conns), n);
    // Small fan-outs and user streams are not paced.
    assert_eq!(hub.deliver_room("small", None, &ev(), None), 3);
    assert_eq!(queued(&conns), 0, "a small fan-out goes straight into idle sockets");
    assert_eq!(hub.deliver_user("u", None, &ev(), None), n);
    assert_eq!(queued(&conns), 0, "so does a user's own stream");
}
