//! The `push.providers` section: which push services this node sends through, with their
//! keys and endpoints (the rest of `push` is in `outbound.rs`).

use serde::{Deserialize, Serialize};

/// `push.providers`: any of them; a provider left out refuses registrations for it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushProviders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<PushWebhook>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webpush: Option<PushWebPush>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fcm: Option<PushFcm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns: Option<PushApns>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushWebhook {
    /// Name of a `webhooks.endpoints` entry that gets `message.undelivered`.
    pub endpoint: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushWebPush {
    /// The VAPID private key: a PEM file (PKCS#8 or SEC1) or the raw key in base64url.
    pub vapid_private_key_file: String,
    /// VAPID `sub` claim: a `mailto:` or `https:` contact.
    pub subject: String,
    /// Hosts (`host` or `host:port`) that subscription endpoints may name although they are
    /// `localhost` or a non-public address, and that may use `http://`: a self-hosted push
    /// service on a private network, or a local stand-in. Empty: public hosts over https only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
}

/// Reads one `push.providers.webpush.allow_hosts` entry: a host name, an IPv4 address or a
/// bracketed IPv6 address, with an optional `:port`; no scheme, path or user name. Returns the
/// host as a parsed URL names it (lowercase, IPv4 in dotted form, IPv6 in brackets) and the port.
pub fn parse_allow_host(entry: &str) -> Result<(String, Option<u16>), String> {
    let bad = || format!("{entry:?} must be a host or host:port (no scheme, path or user name)");
    if entry.is_empty() || entry.chars().any(|c| matches!(c, '/' | '@' | '?' | '#' | '\\') || c.is_whitespace()) {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{inside}]"), port)
    } else {
        match entry.split_once(':') {
            None => (entry.to_string(), None),
            Some((h, p)) if !p.contains(':') => (h.to_string(), Some(p)),
            Some(_) => return Err(format!("{entry:?}: write an IPv6 address in brackets, like [fd00::1]:8443")),
        }
    };
    let port = port.map(|p| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)).transpose()?;
    let url = reqwest::Url::parse(&format!("https://{host}/")).map_err(|_| bad())?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?.to_string();
    Ok((host, port))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushFcm {
    /// A Google service-account JSON key file (its `token_uri` is the OAuth2 endpoint).
    pub service_account_file: String,
    #[serde(default = "fcm_endpoint")]
    pub endpoint: String,
}

fn fcm_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushApns {
    /// The `.p8` token-signing key (PKCS#8 PEM, P-256) from the Apple developer account.
    pub key_file: String,
    pub key_id: String,
    pub team_id: String,
    /// `apns-topic`: the app's bundle id.
    pub topic: String,
    #[serde(default = "apns_endpoint")]
    pub endpoint: String,
}

fn apns_endpoint() -> String {
    "https://api.push.apple.com".into()
}

impl super::Config {
    /// Checks of the `push` section, called from `validate`.
    pub(super) fn validate_push(&self) -> Result<(), super::ConfigError> {
        let key = |path: &str, message: String| Err(super::ConfigError::Key { path: path.into(), message });
        let p = &self.push;
        if p.max_devices_per_user == 0 {
            return key("push.max_devices_per_user", "must be at least 1".into());
        }
        if p.timeout.is_zero() {
            return key("push.timeout", "must be more than 0".into());
        }
        if p.ttl.is_zero() {
            return key("push.ttl", "must be more than 0".into());
        }
        let pp = &p.providers;
        if let Some(w) = &pp.webhook {
            if !self.webhooks.endpoints.iter().any(|e| e.name == w.endpoint) {
                return key("push.providers.webhook.endpoint", "must name a webhooks.endpoints entry".into());
            }
        }
        if let Some(w) = &pp.webpush {
            if w.vapid_private_key_file.is_empty() {
                return key("push.providers.webpush.vapid_private_key_file", "must name a file".into());
            }
            if !w.subject.starts_with("mailto:") && !w.subject.starts_with("https://") {
                return key("push.providers.webpush.subject", "must be a mailto: or https:// contact".into());
            }
            for (i, h) in w.allow_hosts.iter().enumerate() {
                if let Err(m) = parse_allow_host(h) {
                    return key(&format!("push.providers.webpush.allow_hosts[{i}]"), m);
                }
            }
        }
        if let Some(f) = &pp.fcm {
            if f.service_account_file.is_empty() {
                return key("push.providers.fcm.service_account_file", "must name a file".into());
            }
        }
        if let Some(a) = &pp.apns {
            for (name, v) in
                [("key_file", &a.key_file), ("key_id", &a.key_id), ("team_id", &a.team_id), ("topic", &a.topic)]
            {
                if v.is_empty() {
                    return key(&format!("push.providers.apns.{name}"), "must be set".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn push_keys_are_checked_with_their_paths() {
        let c = Config::from_yaml("push:\n  providers:\n    fcm: { service_account_file: sa.json }\n").unwrap();
        assert_eq!(c.push.providers.fcm.unwrap().endpoint, "https://fcm.googleapis.com");
        assert!(err("push:\n  max_devices_per_user: 0\n").contains("push.max_devices_per_user"));
        assert!(err("push:\n  timeout: 0s\n").contains("push.timeout"));
        let e = err("push:\n  providers:\n    apns: { key_file: k.p8, key_id: '', team_id: T, topic: a.b }\n");
        assert!(e.contains("push.providers.apns.key_id"), "{e}");
        let e = err("push:\n  providers:\n    webpush: { vapid_private_key_file: v.pem, subject: ops }\n");
        assert!(e.contains("push.providers.webpush.subject"), "{e}");
        let e = err("push:\n  providers:\n    webhook: { endpoint: app }\n");
        assert!(e.contains("push.providers.webhook.endpoint"), "{e}");
        assert!(err("push:\n  providers:\n    sms: {}\n").contains("sms"));
    }

    #[test]
    fn webpush_allow_hosts_are_hosts_with_an_optional_port() {
        let c = Config::from_yaml(
            "push:\n  providers:\n    webpush: { vapid_private_key_file: v.pem, subject: \"mailto:a@b.c\" }\n",
        )
        .unwrap();
        assert!(c.push.providers.webpush.unwrap().allow_hosts.is_empty(), "empty by default");
        let yaml = |h: &str| {
            format!("push:\n  providers:\n    webpush: {{ vapid_private_key_file: v.pem, subject: \"mailto:a@b.c\", allow_hosts: [\"push.internal\", {h:?}] }}\n")
        };
        for ok in ["127.0.0.1:8443", "Push.Corp.Example", "[fd00::1]", "[::1]:9000", "10.0.0.7", "localhost"] {
            let c = Config::from_yaml(&yaml(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.push.providers.webpush.unwrap().allow_hosts[1], ok);
        }
        for bad in [
            "https://push.internal",
            "push.internal/w",
            "user@push.internal",
            "fd00::1",
            "h:0",
            "h:x",
            "",
            "a b",
            "[fd00::1",
        ] {
            let e = err(&yaml(bad));
            assert!(e.contains("push.providers.webpush.allow_hosts[1]"), "{bad}: {e}");
        }
        use super::parse_allow_host as p;
        assert_eq!(p("Push.Corp.Example").unwrap(), ("push.corp.example".to_string(), None));
        assert_eq!(p("127.1:8443").unwrap(), ("127.0.0.1".to_string(), Some(8443)));
        assert_eq!(p("[FD00::1]:443").unwrap(), ("[fd00::1]".to_string(), Some(443)));
    }
}
