//! The close vocabulary: why the server ends a connection, as a WebSocket close code and a
//! reason. Used by the hub (server-side closes), sessions (a client frame that ends the
//! connection) and the transport (protocol violations), so there is one type for all three.
//!
//! Must never: depend on anything else in the crate (it is a leaf every layer may use).

/// A close: code and a short reason for the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Close { code, reason }
    }

    /// Whether frames queued before the close are still sent first. Only a reader that fell
    /// behind (4008) loses them: its queue is what overflowed.
    pub fn flushes_queue(&self) -> bool {
        self.code != TOO_SLOW
    }
}

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL: u16 = 1002;
pub const UNSUPPORTED: u16 = 1003;
pub const INVALID_DATA: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const TOKEN_EXPIRED: u16 = 4001;
pub const TOO_SLOW: u16 = 4008;
pub const DISCONNECTED: u16 = 4009;
pub const RATE_LIMITED: u16 = 4029;

pub const SHUTDOWN: Close = Close::new(GOING_AWAY, "node shutting down");
pub const EXPIRED: Close = Close::new(TOKEN_EXPIRED, "token expired");
pub const HEARTBEAT: Close = Close::new(POLICY, "heartbeat timeout");
pub const SLOW: Close = Close::new(TOO_SLOW, "send queue full");
pub const KICKED: Close = Close::new(DISCONNECTED, "disconnected by the server");
