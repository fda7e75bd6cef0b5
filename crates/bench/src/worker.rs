//! Spreading subscribers over several bench processes (`--workers N`), for when one process's fd
//! limit is lower than the connections wanted.
//!
//! The parent re-executes itself with the same arguments plus `--worker-index I`; worker `I` opens
//! its share of the connections and talks to the parent in JSON lines: it prints [`Ready`] once
//! its share is subscribed, reads one [`Published`] line (the publishers are done; for `idle`, an
//! empty one when the hold is over), drains, and prints its [`GroupReport`].

use std::ops::Range;
use std::process::Stdio;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::group::{GroupReport, Published};

/// A worker's first line: its share is open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub connected: u64,
    pub failed: u64,
}

/// Connections `0..total` split in `workers` contiguous shares; this is share `index`.
pub fn share(total: usize, workers: usize, index: usize) -> Range<usize> {
    let workers = workers.max(1);
    (index * total / workers)..((index + 1) * total / workers)
}

/// The parent's handle on its worker processes.
pub struct Workers {
    children: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
}

impl Workers {
    /// Starts `n` copies of this program with this run's arguments plus `--worker-index I`.
    pub fn spawn(n: usize) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("cannot find this program to re-execute")?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let mut children = Vec::with_capacity(n);
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg("--worker-index")
                .arg(i.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a bench worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            children.push((child, stdin, stdout));
        }
        Ok(Workers { children })
    }

    /// Reads one JSON line from every worker.
    pub async fn receive<T: DeserializeOwned>(&mut self) -> anyhow::Result<Vec<T>> {
        let mut out = Vec::with_capacity(self.children.len());
        for (i, (_, _, lines)) in self.children.iter_mut().enumerate() {
            let Some(line) = lines.next_line().await? else {
                bail!("bench worker {i} exited early");
            };
            out.push(serde_json::from_str(&line).with_context(|| format!("worker {i}: {line}"))?);
        }
        Ok(out)
    }

    /// Writes one JSON line to every worker.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(message)?;
        line.push('\n');
        for (_, stdin, _) in &mut self.children {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Waits for every worker to exit.
    pub async fn wait(mut self) {
        for (child, _, _) in &mut self.children {
            let _ = child.wait().await;
        }
    }
}

/// A worker's side of the conversation, over its stdin and stdout.
pub struct Parent {
    lines: Lines<BufReader<tokio::io::Stdin>>,
}

impl Parent {
    pub fn new() -> Parent {
        Parent {
            lines: BufReader::new(tokio::io::stdin()).lines(),
        }
    }

    pub fn send<T: Serialize>(&self, message: &T) -> anyhow::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, message)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    }

    pub async fn receive<T: DeserializeOwned>(&mut self) -> anyhow::Result<T> {
        let line = self
            .lines
            .next_line()
            .await?
            .context("the bench parent went away")?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Default for Parent {
    fn default() -> Self {
        Parent::new()
    }
}

/// Merges the workers' reports.
pub fn merge(reports: Vec<GroupReport>) -> GroupReport {
    let mut all = GroupReport::default();
    for r in reports {
        all.merge(r);
    }
    all
}

/// The message that ends an `idle` hold: nothing was published.
pub fn nothing_published() -> Published {
    Published::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        let shares: Vec<_> = (0..3).map(|i| share(10, 3, i)).collect();
        assert_eq!(shares, vec![0..3, 3..6, 6..10]);
        assert_eq!(share(5, 1, 0), 0..5);
    }
}
