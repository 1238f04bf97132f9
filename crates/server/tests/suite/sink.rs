//! A small SMTP server written for the tests: it records every message it is handed
//! (raw, with its Message-ID), can refuse recipients (`reject…@` → 550, `busy…@` → 451),
//! and can hold its reply to the end of DATA so a test can kill the sender mid-delivery.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: Option<String>,
    pub to: Vec<String>,
    pub raw: String,
    /// The sender went on talking after our 250 (lettre says QUIT): it saw the reply.
    pub acknowledged: bool,
}

#[derive(Debug, Default)]
struct Shared {
    deliveries: Mutex<Vec<Delivery>>,
}

pub struct Sink {
    pub port: u16,
    shared: Arc<Shared>,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let (hold, held) = watch::channel(false);
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(session(stream, shared.clone(), held.clone()));
                }
            })
        };
        Self { port, shared, hold, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// While on, the reply to the end of DATA waits until it is turned off again.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    pub fn distinct_message_ids(&self) -> BTreeSet<String> {
        self.deliveries().into_iter().filter_map(|d| d.message_id).collect()
    }

    pub async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.deliveries().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "the sink got {} of {n} messages", self.deliveries().len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The Message-ID header of a raw message.
pub fn message_id_of(raw: &str) -> Option<String> {
    let headers = raw.split("\r\n\r\n").next()?;
    headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id").then(|| value.trim().to_owned())
    })
}

async fn session(stream: TcpStream, shared: Arc<Shared>, mut held: watch::Receiver<bool>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut to = Vec::new();
    let mut unacknowledged: Option<usize> = None;
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Some(i) = unacknowledged.take() {
            shared.deliveries.lock().unwrap()[i].acknowledged = true;
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: String = if command.starts_with("EHLO") || command.starts_with("HELO") {
            "250 sink\r\n".into()
        } else if command.starts_with("MAIL FROM:") {
            to.clear();
            "250 2.1.0 ok\r\n".into()
        } else if command.starts_with("RCPT TO:") {
            let address = line.trim_end()[8..].trim().trim_start_matches('<').trim_end_matches('>').to_owned();
            if address.starts_with("reject") {
                "550 5.1.1 no such user here\r\n".into()
            } else if address.starts_with("busy") {
                "451 4.3.0 mailbox busy, try later\r\n".into()
            } else {
                to.push(address);
                "250 2.1.5 ok\r\n".into()
            }
        } else if command == "DATA" {
            if to.is_empty() {
                "503 5.5.1 no recipients\r\n".into()
            } else {
                if write.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut raw = String::new();
                loop {
                    let mut l = String::new();
                    match lines.read_line(&mut l).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    raw.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                let index = {
                    let mut deliveries = shared.deliveries.lock().unwrap();
                    deliveries.push(Delivery {
                        message_id: message_id_of(&raw),
                        to: std::mem::take(&mut to),
                        raw,
                        acknowledged: false,
                    });
                    deliveries.len() - 1
                };
                // Hold the verdict while the test wants the sender stuck "mid-delivery".
                while *held.borrow_and_update() {
                    if held.changed().await.is_err() {
                        break;
                    }
                }
                unacknowledged = Some(index);
                "250 2.0.0 queued\r\n".into()
            }
        } else if command == "RSET" {
            to.clear();
            "250 ok\r\n".into()
        } else if command == "NOOP" {
            "250 ok\r\n".into()
        } else if command == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "502 5.5.2 not implemented\r\n".into()
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
