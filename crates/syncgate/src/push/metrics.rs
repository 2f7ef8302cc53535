//! Push metrics: sends by provider and result, tokens removed as gone, and registrations
//! replaced to stay within `push.max_devices_per_user`. Queue-level figures (attempts,
//! latency and circuit state per endpoint, dead letters) are the outbound queue's.
//!
//! Must never: label by user, device or token (unbounded label sets).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    pub provider: &'static str,
    /// `delivered`, `skipped`, `gone`, `retry` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Default)]
pub struct PushMetrics {
    pub sends: Family<SendLabels, Counter>,
    pub gone: Family<ProviderLabels, Counter>,
    pub replaced: Counter,
}

impl PushMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("push_sends", "Push sends by provider and result", self.sends.clone());
        r.register(
            "push_tokens_removed",
            "Push registrations removed because the provider said the token is gone",
            self.gone.clone(),
        );
        r.register(
            "push_registrations_replaced",
            "Push registrations dropped to stay within push.max_devices_per_user",
            self.replaced.clone(),
        );
    }
}
