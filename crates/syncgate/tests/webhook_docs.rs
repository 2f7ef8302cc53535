//! The signature verifiers of docs/webhooks.md, exactly as written there, run with python3
//! and node on a webhook a real node sent: they accept it, and refuse it with one byte of
//! the body changed, with another timestamp, or with another secret.

mod common;
mod hooks_support;

use std::process::Command;
use std::time::Duration;

use common::TestServer;
use hooks_support::{endpoint, Hit, Receiver, SECRET};

/// The first fenced block in `doc` that opens with "```{lang}".
fn snippet(doc: &str, lang: &str) -> String {
    let start = doc.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("no {lang} block in docs/webhooks.md"));
    let body = &doc[start + lang.len() + 4..];
    body[..body.find("```").expect("closed block")].to_string()
}

/// Calls `verify(secret, headers, body)` from the snippet with the body read from a file,
/// and prints `True`/`true` or `False`/`false`.
fn python_harness(code: &str) -> String {
    format!(
        "{code}\nimport json, sys\nh = json.loads(sys.argv[1])\nprint(verify(sys.argv[2], h, open(sys.argv[3], 'rb').read()))\n"
    )
}

fn node_harness(code: &str) -> String {
    format!(
        "{code}\nconst h = JSON.parse(process.argv[2]);\nconsole.log(String(verify(process.argv[3], h, require('node:fs').readFileSync(process.argv[4]))));\n"
    )
}

struct Case {
    headers: serde_json::Value,
    body: Vec<u8>,
    secret: &'static str,
}

fn run(program: &str, script: &std::path::Path, dir: &std::path::Path, case: &Case) -> bool {
    let body = dir.join("body.bin");
    std::fs::write(&body, &case.body).unwrap();
    let out = Command::new(program)
        .arg(script)
        .arg(case.headers.to_string())
        .arg(case.secret)
        .arg(&body)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run: {e}"));
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    match String::from_utf8_lossy(&out.stdout).trim() {
        "True" | "true" => true,
        "False" | "false" => false,
        other => panic!("{program} printed {other:?}"),
    }
}

fn cases(hit: &Hit) -> Vec<(Case, bool, &'static str)> {
    let headers = |ts: &str| serde_json::json!({"webhook-id": hit.id, "webhook-timestamp": ts, "webhook-signature": hit.signature});
    let mut tampered = hit.raw.to_vec();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let later = (hit.timestamp.parse::<i64>().unwrap() + 1).to_string();
    let stale = (hit.timestamp.parse::<i64>().unwrap() - 3600).to_string();
    let other_secret = "whsec_dGhpcyBpcyBhbm90aGVyIGtleSAxMjM0NQ==";
    vec![
        (Case { headers: headers(&hit.timestamp), body: hit.raw.to_vec(), secret: SECRET }, true, "as sent"),
        (Case { headers: headers(&hit.timestamp), body: tampered, secret: SECRET }, false, "body changed"),
        (Case { headers: headers(&later), body: hit.raw.to_vec(), secret: SECRET }, false, "timestamp changed"),
        (Case { headers: headers(&stale), body: hit.raw.to_vec(), secret: SECRET }, false, "an hour old"),
        (
            Case { headers: headers(&hit.timestamp), body: hit.raw.to_vec(), secret: other_secret },
            false,
            "other secret",
        ),
    ]
}

#[tokio::test]
async fn the_documented_python_and_node_verifiers_accept_real_webhooks_and_refuse_altered_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/webhooks.md")).unwrap();
    let rx = Receiver::start().await;
    let url = rx.url();
    let s = TestServer::with(|c| c.webhooks.endpoints = vec![endpoint(&url, &["connect"])]).await;
    let (_d, _) = s.device("alice", &[]).await;
    let hit = rx.wait(Duration::from_secs(10), "a connect webhook", |h| !h.is_empty()).await.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("verify.py");
    std::fs::write(&py, python_harness(&snippet(&doc, "python"))).unwrap();
    let js = dir.path().join("verify.js");
    std::fs::write(&js, node_harness(&snippet(&doc, "js"))).unwrap();
    for (case, want, what) in cases(&hit) {
        assert_eq!(run("python3", &py, dir.path(), &case), want, "python, {what}");
        assert_eq!(run("node", &js, dir.path(), &case), want, "node, {what}");
    }
    s.stop().await;
}
