//! Runs every example as its own process, as `cargo run -p switchboard-examples --bin NAME`
//! would, and checks that it exits 0 and printed what it shows.

use std::process::Command;

/// Runs the example binary `path`; returns its standard output, failing on a non-zero exit.
fn run(name: &str, path: &str) -> String {
    let output = Command::new(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stdout.contains(&format!("{name}: ok")), "{stdout}");
    stdout
}

fn has(stdout: &str, lines: &[&str]) {
    for line in lines {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn echo() {
    let out = run("echo", env!("CARGO_BIN_EXE_echo"));
    has(&out, &["> Hello\n< Hello", "> Bye\n< Bye"]);
}

#[test]
fn broadcast() {
    let out = run("broadcast", env!("CARGO_BIN_EXE_broadcast"));
    has(
        &out,
        &[
            "backend: broadcast to 4 channels with one API call",
            "dave: got \"maintenance at 22:00\" (inbox) and \"new version deployed\" (notifications)",
            "every client got both messages",
        ],
    );
}

#[test]
fn rooms() {
    let out = run("rooms", env!("CARGO_BIN_EXE_rooms"));
    has(
        &out,
        &[
            "bob (room-kitchen) heard \"alice\": \"coffee?\"",
            "dave (room-garden) heard \"carol\": \"the roses bloomed\"",
            "each message stayed in its room",
        ],
    );
}

#[test]
fn pubsub() {
    let out = run("pubsub", env!("CARGO_BIN_EXE_pubsub"));
    has(
        &out,
        &[
            "news-junkie got on sports: \"3-1 at half time\"",
            "news-junkie got on weather: \"rain at 16:00\"",
            "stadium (publisher) received nothing back",
        ],
    );
}

#[test]
fn request_response() {
    let out = run("request_response", env!("CARGO_BIN_EXE_request_response"));
    has(
        &out,
        &[
            "client: add(2, 40) -> {\"sum\":42.0}",
            "client: 5 concurrent calls, each answered to its own caller",
            "client: divide -> server error 404: no method divide",
        ],
    );
}

#[test]
fn disconnects() {
    let out = run("disconnects", env!("CARGO_BIN_EXE_disconnects"));
    has(
        &out,
        &[
            "presence in room: 3 clients",
            "watcher: saw tab leave",
            "watcher: saw phone leave",
            "presence in room: 1 client (watcher)",
            "backend webhook: tab disconnected (code 3000",
            "backend webhook: phone disconnected (code 3000",
        ],
    );
}

#[test]
fn mini_chat() {
    let out = run("mini_chat", env!("CARGO_BIN_EXE_mini_chat"));
    has(
        &out,
        &[
            "TIMELINE - Mini chat over Switchboard",
            "Client 1: ═══",
            "│connect│",
            "│\"Hi\"│",
            "│\"Hello\"│",
            "│\"Hey\"│",
            "Broadcast: when Client 1 said \"Hi\":",
            "\"User1: Hi\" to Client 2",
            "\"User3: Hey\" to Client 1",
        ],
    );
}

#[test]
fn backend_fanout() {
    let out = run("backend_fanout", env!("CARGO_BIN_EXE_backend_fanout"));
    has(
        &out,
        &[
            "TIMELINE - join_all, the guide's gather",
            "at most 2 in flight",
            "Slot 1: ",
            "Slot 2: ",
            "client: \"report ready\" arrived",
        ],
    );
}

/// A server started apart from the example (here in the test's process, as `switchboard serve`
/// would run), configured by `configure`; returns its WebSocket URL and the handle stopping it.
fn running_server(
    configure: impl FnOnce(&mut switchboard::Config) + Send + 'static,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    std::thread::JoinHandle<()>,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async move {
            let data_dir = std::env::temp_dir()
                .join(format!("switchboard-example-test-{}", uuid::Uuid::new_v4()));
            let mut config = switchboard::Config {
                data_dir: data_dir.clone(),
                ..switchboard::Config::default()
            };
            configure(&mut config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tx.send(format!("ws://{addr}/connection/websocket"))
                .unwrap();
            let _ = switchboard::run(config, listener, stop).await;
            let _ = std::fs::remove_dir_all(data_dir);
        });
    });
    (rx.recv().unwrap(), shutdown, thread)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_with(name: &str, path: &str, args: &[&str]) -> String {
    let output = Command::new(path).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{name} {args:?} exited with {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn examples_run_against_a_server_started_apart() {
    let (url, shutdown, thread) = running_server(|_| {});
    let out = run_with("echo", env!("CARGO_BIN_EXE_echo"), &["--url", &url]);
    has(&out, &[&format!("connected to {url}"), "echo: ok"]);
    let out = run_with(
        "mini_chat",
        env!("CARGO_BIN_EXE_mini_chat"),
        &["--url", &url],
    );
    has(&out, &["mini_chat: ok"]);
    shutdown.cancel();
    thread.join().unwrap();

    // An example with a backend: the server is told where it will listen.
    let backend = format!("127.0.0.1:{}", free_port());
    let endpoint = format!("http://{backend}/switchboard/rpc");
    let (url, shutdown, thread) = running_server(move |c| c.proxy_rpc_endpoint = Some(endpoint));
    let out = run_with(
        "request_response",
        env!("CARGO_BIN_EXE_request_response"),
        &["--url", &url, "--backend", &backend],
    );
    has(
        &out,
        &[
            "(your server needs --proxy-rpc-endpoint",
            "request_response: ok",
        ],
    );
    shutdown.cancel();
    thread.join().unwrap();
}
