//! Process limits that decide how many connections fit: the open-file (fd) limit.
//!
//! Every connection is a file descriptor, so the soft `RLIMIT_NOFILE` (often 1,024 by default) caps
//! the connections a process can hold long before memory does. Both the server and the bench raise
//! their soft limit to the hard limit at start, and the server derives its default connection limit
//! from the result.

/// Descriptors kept free for everything that is not a client connection: the listener, the
/// runtime's own fds, log files, SQLite, outgoing connections to Redis and webhooks, and the
/// sockets accepted while a refusal is being written.
pub const FD_HEADROOM: u64 = 256;

/// The open-file limits after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise its soft limit to).
    pub hard: u64,
}

impl FdLimit {
    /// Connections that fit under the soft limit, keeping [`FD_HEADROOM`] descriptors free.
    pub fn connection_capacity(&self) -> u64 {
        self.soft.saturating_sub(FD_HEADROOM).max(1)
    }
}

/// Raises the soft open-file limit to the hard limit and returns both. On failure (or on a
/// platform without rlimits) returns the limits as they were, read where possible.
// `rlim_t` is u64 on Linux but not on every Unix, hence the casts.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> FdLimit {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return FdLimit {
                soft: 1024,
                hard: 1024,
            };
        }
        let before = FdLimit {
            soft: limit.rlim_cur as u64,
            hard: limit.rlim_max as u64,
        };
        if limit.rlim_cur < limit.rlim_max {
            // A hard limit of "unlimited" cannot be used as a soft limit for files: cap it at the
            // kernel's per-process maximum (fs.nr_open), commonly 1,048,576.
            let mut target = limit.rlim_max;
            if target == libc::RLIM_INFINITY {
                target = nr_open().unwrap_or(1 << 20) as libc::rlim_t;
            }
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return FdLimit {
                    soft: target as u64,
                    hard: before.hard,
                };
            }
        }
        before
    }
    #[cfg(not(unix))]
    {
        FdLimit {
            soft: 1024,
            hard: 1024,
        }
    }
}

#[cfg(unix)]
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn raising_is_idempotent_and_capacity_keeps_headroom() {
        let first = raise_fd_limit();
        let second = raise_fd_limit();
        assert_eq!(first, second);
        assert!(first.soft <= first.hard || first.hard == libc::RLIM_INFINITY as u64);
        assert_eq!(
            FdLimit {
                soft: 20_000,
                hard: 20_000
            }
            .connection_capacity(),
            20_000 - FD_HEADROOM
        );
        assert_eq!(FdLimit { soft: 10, hard: 10 }.connection_capacity(), 1);
    }
}
