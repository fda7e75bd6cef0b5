//! The FastAPI example backend (`examples/fastapi-backend`) end to end: a real server in this
//! process asks the real FastAPI app, run by uvicorn on a free loopback port, through its proxy
//! hooks (connect by session cookie, subscribe, RPC) and webhooks (signed), and the app publishes
//! through the server API. `tests/compat/fastapi_backend_sdk.py` drives both with the official
//! Python SDK (`centrifuge-python`); the Python packages are those ./test.sh installs in
//! tests/compat/.venv (tests/compat/requirements.txt includes the example's pinned requirements).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::script::run_script;
use common::{http_raw, temp_dir, TestServer};
use switchboard::Config;
use tokio::process::{Child, Command};

const API_KEY: &str = "fastapi-example-api-key";
const WEBHOOK_SECRET: &str = "fastapi-example-webhook-secret";
/// How long uvicorn may take to import the app and listen.
const BACKEND_START: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_example_backend_works_with_the_python_sdk() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/fastapi-backend");
    let compat = root.join("tests/compat");
    // The virtual environment ./test.sh makes, else whatever `python3` is on PATH.
    let venv_python = compat.join(".venv/bin/python");
    let python = if venv_python.is_file() {
        venv_python.to_string_lossy().into_owned()
    } else {
        "python3".to_string()
    };
    let probe = run_script(
        &python,
        &["-c", "import centrifuge, fastapi, uvicorn, httpx"],
        &[],
        &compat,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        probe.code,
        Some(0),
        "the Python SDK or the example's packages are not installed for `{python}`: run ./test.sh \
         (it makes tests/compat/.venv and installs tests/compat/requirements.txt, which includes \
         examples/fastapi-backend/requirements.txt), or `python3 -m venv tests/compat/.venv && \
         tests/compat/.venv/bin/pip install -r tests/compat/requirements.txt`\n{}",
        probe.stderr
    );

    let port = free_port();
    let backend_url = format!("http://127.0.0.1:{port}");
    // The server as the example's README starts it: its config file, then the flags.
    let server = TestServer::with(|config| {
        let data_dir = config.data_dir.clone();
        *config = Config::from_file(&example.join("switchboard.toml"))
            .expect("examples/fastapi-backend/switchboard.toml is a valid config");
        config.data_dir = data_dir;
        config.proxy_connect_endpoint = Some(format!("{backend_url}/switchboard/connect"));
        config.proxy_rpc_endpoint = Some(format!("{backend_url}/switchboard/rpc"));
        config.proxy_subscribe_endpoint = Some(format!("{backend_url}/switchboard/subscribe"));
        config.proxy_http_headers = vec!["Cookie".into()];
        config.webhook_endpoint = Some(format!("{backend_url}/switchboard/events"));
        config.webhook_secret = Some(WEBHOOK_SECRET.into());
        config.api_key = Some(API_KEY.into());
    })
    .await;
    let backend = Backend::start(&python, &example, port, server.addr).await;

    let address = server.addr.to_string();
    let run = run_script(
        &python,
        &["fastapi_backend_sdk.py", &address, &backend_url],
        &[("PYTHONUNBUFFERED", "1")],
        &compat,
        Duration::from_secs(60),
    )
    .await;
    if run.timed_out || run.code != Some(0) {
        eprintln!("--- the FastAPI backend's log ---\n{}", backend.log());
    }
    run.assert_success("FastAPI example backend driven by centrifuge-python");
    backend.stop().await;
    server.stop().await;
}

/// A loopback port free a moment ago (uvicorn binds it itself, right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address").port()
}

/// The example app under uvicorn, killed when dropped; its output goes to a log file.
struct Backend {
    child: Child,
    log_dir: PathBuf,
}

impl Backend {
    /// Starts uvicorn in the example's directory and waits until it accepts connections.
    async fn start(
        python: &str,
        example: &Path,
        port: u16,
        switchboard: std::net::SocketAddr,
    ) -> Backend {
        let log_dir = temp_dir();
        let log = std::fs::File::create(log_dir.join("uvicorn.log")).expect("create the log");
        let mut command = Command::new(python);
        command
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .current_dir(example)
            .env("SWITCHBOARD_URL", format!("http://{switchboard}"))
            .env("SWITCHBOARD_API_KEY", API_KEY)
            .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("PYTHONUNBUFFERED", "1")
            // No __pycache__ left in the example's directory.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .kill_on_drop(true);
        // The app calls the server on loopback: never through a proxy of the environment.
        for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            command.env_remove(proxy).env_remove(proxy.to_lowercase());
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{python} -m uvicorn`: {e}"));
        let mut backend = Backend { child, log_dir };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = backend.child.try_wait() {
                panic!(
                    "the FastAPI backend exited ({status}) before listening:\n{}",
                    backend.log()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < BACKEND_START,
                "the FastAPI backend did not listen on port {port} within {BACKEND_START:?}:\n{}",
                backend.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (status, body) = http_raw(
            addr,
            "GET /online HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            status,
            200,
            "GET /online of the FastAPI backend: {body}\n{}",
            backend.log()
        );
        backend
    }

    /// Everything uvicorn and the app printed so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("uvicorn.log")).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}
