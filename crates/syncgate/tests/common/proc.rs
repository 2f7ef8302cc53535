//! The real `syncgate` binary as a child process (for signals and kill -9).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{API_KEY, SECRET};
use syncgate_client::Api;

pub const BIN: &str = env!("CARGO_BIN_EXE_syncgate");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A client token from the binary's `token` command (rooms `a` and `b:*`, ten minutes).
pub fn token(user: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--user", user, "--rooms", "a,b:*", "--ttl", "10m"])
        .env("SYNCGATE_JWT_SECRET", SECRET)
        .env("SYNCGATE_API_KEY", API_KEY)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Proc {
    pub fn spawn(dir: &std::path::Path, port: u16, extra: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("SYNCGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SYNCGATE_DATA_DIR", dir)
            .env("SYNCGATE_JWT_SECRET", SECRET)
            .env("SYNCGATE_API_KEY", API_KEY)
            .env("SYNCGATE_LOG", "warn")
            .env("SYNCGATE_RATE_LIMITS__WS_CONNECT_PER_USER", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc { child: cmd.spawn().expect("spawn syncgate"), base: format!("http://127.0.0.1:{port}") }
    }

    pub async fn wait_ready(&self) {
        let api = Api::unauthenticated(&self.base);
        for _ in 0..200 {
            if let Ok(r) = api.ready().await {
                if r.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready");
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "process did not exit in {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
