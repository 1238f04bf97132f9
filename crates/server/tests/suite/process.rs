//! The real `ponte` binary as a child process, for tests that kill it or run two.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// This build's `ponte`, pinned at first use. `target/debug/ponte` is shared by every
/// checkout building into the same target folder, so another checkout's build could swap
/// it mid-run; a hard link taken right after cargo built it keeps ours.
pub fn ponte_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_ponte"));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // Links left by earlier runs (an hour old or more) are removed.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
            if old && entry.file_name().to_string_lossy().starts_with("ponte-suite-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let pinned = dir.join(format!("ponte-suite-{}", std::process::id()));
        match std::fs::hard_link(&built, &pinned) {
            Ok(()) => pinned,
            Err(_) => built,
        }
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct PonteProcess {
    child: Child,
    pub base: String,
}

impl PonteProcess {
    fn spawn(subcommand: &str, dir: &Path, env: &[(&str, String)]) -> (Child, String, PathBuf) {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(ponte_bin());
        command.arg(subcommand).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::null());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PONTE_")) {
            command.env_remove(key);
        }
        command
            .env("PONTE_BIND", format!("127.0.0.1:{port}"))
            .env("PONTE_PUBLIC_URL", &base)
            .env("PONTE_DATA_DIR", dir)
            .env("PONTE_LOG_LEVEL", "warn")
            .env("PONTE_WORKERS", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        let log = dir.join(format!("ponte-{subcommand}-{port}.log"));
        command.stderr(std::fs::File::create(&log).unwrap());
        (command.spawn().expect("the ponte binary starts"), base, log)
    }

    /// `ponte serve` in `dir` with `env` (and nothing else of ours from the environment),
    /// once it answers `/healthz`.
    pub async fn serve(dir: &Path, env: &[(&str, String)]) -> Self {
        let (mut child, base, log) = Self::spawn("serve", dir, env);
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("ponte serve exited early ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
                return Self { child, base };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ponte serve did not become healthy");
    }

    /// `ponte worker` in `dir` with `env` (it has no port: the caller watches its jobs).
    pub fn worker(dir: &Path, env: &[(&str, String)]) -> Self {
        let (child, base, _) = Self::spawn("worker", dir, env);
        Self { child, base }
    }

    /// SIGTERM, then the exit status (within `within`).
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.exited(within).await
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// The exit status, once the process has ended (within `within`).
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "ponte did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no drain, no lease released.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The value of a Prometheus sample (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base)).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for PonteProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
