//! Runs a compatibility script (an official client SDK driving the test server) as a child
//! process, with a time limit, and reports its output.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How a script run ended.
pub struct ScriptRun {
    /// The exit code; `None` when it was killed (time limit) or died of a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ScriptRun {
    /// Panics, showing everything the script printed, unless it exited with 0 in time.
    pub fn assert_success(&self, what: &str) {
        let output = format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        assert!(
            !self.timed_out,
            "{what} ran out of time and was killed\n{output}"
        );
        assert_eq!(self.code, Some(0), "{what} failed\n{output}");
        println!("{what} passed\n{output}");
    }
}

/// Runs `program args…` in `dir` with extra environment `envs`, killing it after `limit`.
///
/// Output is collected while the child runs, so it is there to show even when the child is
/// killed. Panics with a clear message if the program cannot be started.
pub async fn run_script(
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    dir: &Path,
    limit: Duration,
) -> ScriptRun {
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{program}` (is it installed and on PATH?): {e}"));
    let stdout = tokio::spawn(read_all(child.stdout.take().expect("piped stdout")));
    let stderr = tokio::spawn(read_all(child.stderr.take().expect("piped stderr")));
    let (code, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => (status.expect("wait for the script").code(), false),
        Err(_) => {
            let _ = child.kill().await;
            (None, true)
        }
    };
    ScriptRun {
        code,
        timed_out,
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
    }
}

async fn read_all(mut pipe: impl AsyncRead + Unpin) -> String {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes).await;
    String::from_utf8_lossy(&bytes).into_owned()
}
