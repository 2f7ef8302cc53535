//! The admin UI's files, compiled into the binary, served at `/admin` and `/admin/assets/*`
//! with caching headers (an ETag per file, revalidated) and a Content-Security-Policy that
//! keeps every request of the page on this host.
//!
//! Must never: serve a file that is not in `FILES`, or serve the page without its CSP.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// (name, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("ui/app.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_bytes!("ui/pages.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_bytes!("ui/ui.js")),
    ("queue.js", "text/javascript; charset=utf-8", include_bytes!("ui/queue.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("ui/style.css")),
    ("uplot.esm.js", "text/javascript; charset=utf-8", include_bytes!("ui/uplot.esm.js")),
    ("uplot.min.css", "text/css; charset=utf-8", include_bytes!("ui/uplot.min.css")),
    ("favicon.svg", "image/svg+xml", include_bytes!("ui/favicon.svg")),
];

const INDEX: &[u8] = include_bytes!("ui/index.html");

/// Every request of the page stays on this host; no inline script, no framing.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                       form-action 'self'; frame-ancestors 'none'";

static ETAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| FILES.iter().map(|(_, _, b)| etag(b)).chain(std::iter::once(etag(INDEX))).collect());

fn etag(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let d = Sha1::digest(bytes);
    format!("\"{}\"", d[..8].iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn serve(req: &HeaderMap, content_type: &'static str, bytes: &'static [u8], tag: &str) -> Response {
    let mut resp = if req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
    };
    let h = resp.headers_mut();
    // Revalidate on every load (cheap: a 304), so a new binary's UI is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[utoipa::path(get, path = "/admin", tag = "admin",
    responses((status = 200, description = "The admin web UI (HTML); sign in with an admin key", content_type = "text/html")))]
pub async fn index(headers: HeaderMap) -> Response {
    serve(&headers, "text/html; charset=utf-8", INDEX, &ETAGS[FILES.len()])
}

#[utoipa::path(get, path = "/admin/assets/{file}", tag = "admin", params(("file" = String, Path)),
    responses((status = 200, description = "A script, stylesheet or image of the admin UI"), (status = 404)))]
pub async fn asset(headers: HeaderMap, Path(file): Path<String>) -> Response {
    match FILES.iter().position(|(name, _, _)| *name == file) {
        Some(i) => serve(&headers, FILES[i].1, FILES[i].2, &ETAGS[i]),
        None => {
            crate::api::error::ApiError::from(crate::error::Error::not_found("no such admin asset")).into_response()
        }
    }
}
