//! Push registrations: which provider address each device of a user has.
//!
//! Owns: the `Registration` record, its validation, and the `Devices` trait with its two
//! implementations (`devices_embedded`: a redb file beside the embedded store;
//! `devices_redis`: one hash per user in cluster mode). A user holds at most
//! `push.max_devices_per_user` registrations; a new client id past it replaces the one
//! updated least recently.
//!
//! Must never: keep more registrations per user than the bound, or remove a registration
//! that was replaced since a provider called its token gone (`remove_if`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::guard::{check_endpoint, AllowHosts};
use crate::error::Error;
use crate::store::StoreResult;

/// The push services a device can register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Web Push (RFC 8030) with VAPID and RFC 8291 encryption: needs `subscription`.
    Webpush,
    /// Firebase Cloud Messaging HTTP v1: needs `token` (the FCM registration token).
    Fcm,
    /// Apple Push Notification service: needs `token` (the device token, hex).
    Apns,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Webpush => "webpush",
            Provider::Fcm => "fcm",
            Provider::Apns => "apns",
        }
    }
}

/// A browser's `PushSubscription` (`subscription.toJSON()`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subscription {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionKeys {
    /// The user agent's P-256 public key, uncompressed point, base64url.
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

/// One device's push address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub client_id: String,
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Subscription>,
    /// Unix ms of the last registration call for this client id.
    pub updated_at: i64,
}

impl Registration {
    /// What identifies the provider address (token or subscription endpoint): a gone answer
    /// removes the registration only while it still has this address.
    pub fn address(&self) -> &str {
        match (&self.token, &self.subscription) {
            (Some(t), _) => t,
            (None, Some(s)) => &s.endpoint,
            (None, None) => "",
        }
    }

    /// Checks that the record has what its provider needs, within `max` bytes per field; a
    /// Web Push endpoint must also pass the endpoint rule (`guard::check_endpoint`: https, a
    /// public host, unless `allow` lists it).
    pub fn validate(&self, max_token: usize, allow: &AllowHosts) -> Result<(), Error> {
        let long = |what: &str| Error::invalid(format!("{what} must be 1 to {max_token} bytes"));
        match self.provider {
            Provider::Fcm | Provider::Apns => {
                if self.subscription.is_some() {
                    return Err(Error::invalid("fcm and apns registrations take `token`, not `subscription`"));
                }
                let Some(t) = &self.token else {
                    return Err(Error::invalid("`token` is required for this provider"));
                };
                if t.is_empty() || t.len() > max_token || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(long("token"));
                }
                if self.provider == Provider::Apns && !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::invalid("an APNs device token is hexadecimal"));
                }
            }
            Provider::Webpush => {
                if self.token.is_some() {
                    return Err(Error::invalid("webpush registrations take `subscription`, not `token`"));
                }
                let Some(s) = &self.subscription else {
                    return Err(Error::invalid("`subscription` is required for webpush"));
                };
                if s.endpoint.len() > max_token {
                    return Err(long("subscription.endpoint"));
                }
                check_endpoint(&s.endpoint, allow).map_err(Error::invalid)?;
                super::webpush::parse_keys(&s.keys)?;
            }
        }
        Ok(())
    }
}

/// Durable push registrations, per user and client id.
#[async_trait]
pub trait Devices: Send + Sync + 'static {
    /// Stores (or replaces) a registration, keeping at most `max` per user. Returns the
    /// client ids whose registrations were dropped to make room.
    async fn put(&self, user: &str, reg: Registration, max: usize) -> StoreResult<Vec<String>>;

    /// The registration of one device.
    async fn get(&self, user: &str, client_id: &str) -> StoreResult<Option<Registration>>;

    /// Every registration of a user (at most `max_devices_per_user`).
    async fn list(&self, user: &str) -> StoreResult<Vec<Registration>>;

    /// Removes a registration; false if there was none.
    async fn remove(&self, user: &str, client_id: &str) -> StoreResult<bool>;

    /// Removes a registration only if it still has this provider address (a device that
    /// registered a new token meanwhile keeps it). True if removed.
    async fn remove_if(&self, user: &str, client_id: &str, address: &str) -> StoreResult<bool>;
}

/// Picks the registrations to drop so that one more fits under `max`: the least recently
/// updated ones other than `keep`.
pub(crate) fn victims<'a>(existing: impl Iterator<Item = (&'a str, i64)>, keep: &str, max: usize) -> Vec<String> {
    let mut others: Vec<(&str, i64)> = existing.filter(|(c, _)| *c != keep).collect();
    let room = max.saturating_sub(1);
    if others.len() <= room {
        return Vec::new();
    }
    others.sort_by_key(|(c, t)| (*t, *c));
    let n = others.len() - room;
    others.into_iter().take(n).map(|(c, _)| c.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_are_the_least_recently_updated_others() {
        let v = victims([("a", 3), ("b", 1), ("c", 2)].into_iter(), "new", 3);
        assert_eq!(v, vec!["b"]);
        let v = victims([("a", 3), ("b", 1), ("c", 2)].into_iter(), "b", 3);
        assert!(v.is_empty());
        let v = victims([("a", 3), ("b", 1), ("c", 2)].into_iter(), "new", 1);
        assert_eq!(v, vec!["b", "c", "a"]);
    }
}
