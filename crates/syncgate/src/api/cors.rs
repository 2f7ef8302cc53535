//! CORS for the HTTP API (`server.cors_origins`), answered by the request middleware.
//!
//! Its header values are built once when the router is; a request costs a look at its
//! `Origin` and a few header inserts. (A `tower_http` CORS layer on the router is cloned,
//! with its lists, for every request.)
//!
//! - A preflight (`OPTIONS` with `Access-Control-Request-Method`, to any path) is answered
//!   here, 204 with the allowed methods, request headers and max age, and
//!   `Access-Control-Allow-Origin` when the origin is allowed; it never reaches a route.
//! - Any other answer gets `Access-Control-Allow-Origin` (the origin, or `*` when every origin
//!   is allowed) and `Access-Control-Expose-Headers` when the origin is allowed.
//! - Every answer varies by `Origin` and the preflight's request headers.
//!
//! Credentials are never allowed (no `Access-Control-Allow-Credentials`).

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// How long a browser may cache a preflight answer, in seconds.
const MAX_AGE_S: u32 = 600;

pub struct Cors {
    /// Every origin is allowed (`["*"]`): answers say `*`.
    any: bool,
    origins: Vec<HeaderValue>,
    any_origin: HeaderValue,
    methods: HeaderValue,
    request_headers: HeaderValue,
    expose: HeaderValue,
    max_age: HeaderValue,
    vary: HeaderValue,
}

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect(),
            any_origin: HeaderValue::from_static("*"),
            methods: HeaderValue::from_static("GET,POST,DELETE,OPTIONS"),
            request_headers: HeaderValue::from_static(
                "authorization,content-type,x-api-key,idempotency-key,x-request-id",
            ),
            expose: HeaderValue::from_static("x-request-id,retry-after,x-ratelimit-limit,x-ratelimit-remaining"),
            max_age: HeaderValue::from(MAX_AGE_S),
            vary: HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
        }
    }

    /// Whether a request is a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The `Access-Control-Allow-Origin` value for a request's headers, if its origin is
    /// allowed.
    pub fn allow_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.any {
            return Some(self.any_origin.clone());
        }
        let origin = headers.get(header::ORIGIN)?;
        self.origins.iter().any(|o| o == origin).then(|| origin.clone())
    }

    /// The answer to a preflight.
    pub fn preflight(&self, allow: Option<HeaderValue>) -> Response {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        if let Some(o) = allow {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, self.request_headers.clone());
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        h.append(header::VARY, self.vary.clone());
        resp
    }

    /// Adds the CORS headers to an answer that is not a preflight's.
    pub fn decorate(&self, h: &mut HeaderMap, allow: Option<HeaderValue>) {
        if let Some(o) = allow {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, self.expose.clone());
        }
        h.append(header::VARY, self.vary.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn listed_origins_are_echoed_and_others_get_nothing() {
        let c = Cors::new(&["https://app.example".into(), "https://b.example".into()]);
        assert_eq!(c.allow_origin(&headers(Some("https://b.example"))).unwrap(), "https://b.example");
        assert!(c.allow_origin(&headers(Some("https://evil.example"))).is_none());
        assert!(c.allow_origin(&headers(None)).is_none());
        let mut h = HeaderMap::new();
        c.decorate(&mut h, None);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(h.get(header::ACCESS_CONTROL_EXPOSE_HEADERS).is_none());
        assert!(h.get(header::VARY).unwrap().to_str().unwrap().contains("origin"));
    }

    #[test]
    fn any_origin_answers_a_star() {
        let c = Cors::new(&["*".into()]);
        assert_eq!(c.allow_origin(&headers(Some("https://x.example"))).unwrap(), "*");
        assert_eq!(c.allow_origin(&headers(None)).unwrap(), "*");
        let r = c.preflight(c.allow_origin(&headers(Some("https://x.example"))));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("idempotency-key"));
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    }

    #[test]
    fn a_preflight_is_an_options_with_a_request_method() {
        let mut h = HeaderMap::new();
        assert!(!Cors::is_preflight(&Method::OPTIONS, &h));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        assert!(Cors::is_preflight(&Method::OPTIONS, &h));
        assert!(!Cors::is_preflight(&Method::GET, &h));
    }
}
