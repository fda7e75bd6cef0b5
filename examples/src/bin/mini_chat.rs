//! The guide's mini chat with three clients, and its TIMELINE drawing — drawn here from the
//! events this run really saw. Three clients connect one after the other, join `chat`, and each
//! says one thing; every message reaches all three. As in the guide, one event loop does it all:
//! this example runs the server's connections *and* the three clients on a single-threaded tokio
//! runtime, every `await` handing the thread to whoever has work (only the server's SQLite writes
//! run on a thread of their own, as blocking work must).
//!
//! `cargo run -p switchboard-examples --bin mini_chat [-- --url …]`

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_client::{Client, SubscriptionEvent, SubscriptionOptions};
use switchboard_examples::{within, Args, Server};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    switchboard_examples::main("mini_chat", run()).await
}

/// What one client saw, in microseconds since the start.
#[derive(Debug, Clone)]
enum Seen {
    Connected { at: u64 },
    Said { at: u64, text: String },
    Received { at: u64, from: usize, text: String },
}

type Log = Arc<Mutex<Vec<(usize, Seen)>>>;

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

const SAYINGS: [&str; 3] = ["Hi", "Hello", "Hey"];

async fn run() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let server = Server::start(&args, |_| {}).await?;
    let start = Instant::now();
    let log = Log::default();
    let mut clients: Vec<Client> = Vec::new();
    let mut readers = Vec::new();

    for n in 0..3 {
        let client = server.client().name(format!("user{}", n + 1)).build();
        client.connect();
        within("the connection", client.ready()).await??;
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((n, Seen::Connected { at: micros(start) }));
        let chat = client.new_subscription("chat", SubscriptionOptions::new())?;
        let mut events = chat.events();
        chat.subscribe();
        within("joining the chat", chat.ready()).await??;
        // Each client's receive loop: the guide's `while True: data = await receive_text()`.
        let log = log.clone();
        readers.push(tokio::spawn(async move {
            let mut received = 0;
            while received < SAYINGS.len() {
                match events.next().await {
                    Some(SubscriptionEvent::Publication(p)) => {
                        let from = p.data["from"].as_u64().unwrap_or(0) as usize;
                        let text = p.data["text"].as_str().unwrap_or_default().to_string();
                        log.lock().unwrap_or_else(|e| e.into_inner()).push((
                            n,
                            Seen::Received {
                                at: micros(start),
                                from,
                                text,
                            },
                        ));
                        received += 1;
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
            received
        }));
        clients.push(client);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    for (n, text) in SAYINGS.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(120)).await;
        log.lock().unwrap_or_else(|e| e.into_inner()).push((
            n,
            Seen::Said {
                at: micros(start),
                text: text.to_string(),
            },
        ));
        clients[n]
            .publish("chat", json!({"from": n, "text": text}))
            .await?;
    }
    for reader in readers {
        let received = within("every message", reader).await??;
        anyhow::ensure!(received == SAYINGS.len(), "a client missed messages");
    }
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    print!("{}", draw(&log));
    for (n, text) in SAYINGS.iter().enumerate() {
        for listener in 0..3 {
            anyhow::ensure!(
                log.iter().any(|(who, seen)| *who == listener
                    && matches!(seen, Seen::Received { from, text: t, .. } if *from == n && t == text)),
                "User{} never received User{}'s {text:?}",
                listener + 1,
                n + 1
            );
        }
    }
    server.stop().await;
    Ok(())
}

/// Columns of the drawing's lanes.
const WIDTH: usize = 66;
const MARGIN: usize = 10;

/// The guide's TIMELINE, from real events: each client's lane shows its connect and what it
/// said at their real times (scaled to the width); then, for each message, who received it and
/// how long after it was said.
fn draw(log: &[(usize, Seen)]) -> String {
    let end = log
        .iter()
        .map(|(_, seen)| match seen {
            Seen::Connected { at } | Seen::Said { at, .. } | Seen::Received { at, .. } => *at,
        })
        .max()
        .unwrap_or(1)
        .max(1);
    let column = |at: u64| (at as f64 / end as f64 * (WIDTH - 12) as f64) as usize;
    let mut out = String::new();
    out.push_str("TIMELINE - Mini chat over Switchboard (real events of this run)\n");
    out.push_str("══════════════════════════════════════════════════════════════\n\n");
    out.push_str("One event loop, one thread: the server's connections and the three clients.\n\n");
    for n in 0..3 {
        let mut lane = vec![' '; WIDTH + 12];
        let mut labels: Vec<(usize, String)> = Vec::new();
        let mut said_at = None;
        for (who, seen) in log {
            if *who != n {
                continue;
            }
            match seen {
                Seen::Connected { at } => labels.push((column(*at), "│connect│".into())),
                Seen::Said { at, text } => {
                    labels.push((column(*at), format!("│\"{text}\"│")));
                }
                Seen::Received { .. } => {}
            }
        }
        labels.sort();
        // Lay labels out left to right, never overlapping, joined by "await receive".
        let mut cursor = 0;
        let mut first = true;
        for (col, label) in &labels {
            let at = (*col).max(cursor);
            if !first {
                fill_gap(&mut lane, cursor, at);
            }
            first = false;
            for (i, ch) in label.chars().enumerate() {
                if at + i < lane.len() {
                    lane[at + i] = ch;
                }
            }
            if label.starts_with("│\"") {
                said_at = Some(at + label.chars().count() / 2);
            }
            cursor = at + label.chars().count();
        }
        fill_gap(&mut lane, cursor, WIDTH);
        out.push_str(&format!(
            "{:<MARGIN$}{}\n",
            format!("Client {}:", n + 1),
            "═".repeat(WIDTH)
        ));
        let lane: String = lane.into_iter().collect();
        out.push_str(&format!("{}{}\n", " ".repeat(MARGIN), lane.trim_end()));
        if let Some(col) = said_at {
            out.push_str(&format!("{}│\n", " ".repeat(MARGIN + col)));
        }
    }
    for (speaker, text) in SAYINGS.iter().enumerate() {
        let said = log.iter().find_map(|(who, seen)| match seen {
            Seen::Said { at, text: t } if *who == speaker && t == text => Some(*at),
            _ => None,
        });
        let Some(said) = said else { continue };
        out.push_str(&format!(
            "\nBroadcast: when Client {} said \"{text}\":\n",
            speaker + 1
        ));
        let deliveries: Vec<(usize, u64)> = log
            .iter()
            .filter_map(|(who, seen)| match seen {
                Seen::Received { at, from, text: t } if *from == speaker && t == text => {
                    Some((*who, at.saturating_sub(said)))
                }
                _ => None,
            })
            .collect();
        for (i, (who, after)) in deliveries.iter().enumerate() {
            let branch = if i + 1 == deliveries.len() {
                "└─→"
            } else {
                "├─→"
            };
            let whom = if *who == speaker {
                format!("Client {} (its own message back)", who + 1)
            } else {
                format!("Client {}", who + 1)
            };
            out.push_str(&format!(
                "           {branch} \"User{}: {text}\" to {whom}, {:.1} ms later\n",
                speaker + 1,
                *after as f64 / 1000.0
            ));
        }
    }
    out.push_str("\nEvery `await` of a receive loop gave the thread back to the others.\n");
    out
}

/// Fills `lane[from..to]` with "─", writing "await receive" in the middle when it fits.
fn fill_gap(lane: &mut [char], from: usize, to: usize) {
    let to = to.min(lane.len());
    if from >= to {
        return;
    }
    for c in &mut lane[from..to] {
        *c = '─';
    }
    let words: Vec<char> = "await receive".chars().collect();
    if to - from >= words.len() + 4 {
        let start = from + (to - from - words.len()) / 2;
        lane[start..start + words.len()].copy_from_slice(&words);
    }
}
