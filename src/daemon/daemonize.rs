//! Daemonizing: the fork, the ready pipe from the daemon to the command that started it,
//! and the daemon's detaching from that command's terminal or pipes.
//!
//! Invariants: the fork happens while the process has one thread (before the store is
//! opened: its scan starts threads). The parent exits only when the child has said "ok"
//! (the mount answers) or failed: it then prints the child's error, or says the daemon
//! exited, and `imagefs mount` exits 1. The child's standard descriptors stay those of the
//! command until the mount is ready, then go to /dev/null (stderr to the log file if any;
//! with a log file, stderr is the file from the fork on). In the foreground with a log file,
//! stderr is the file from before the store is opened.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

/// Which side of the fork this is.
pub(super) enum Forked {
    /// The command that started the daemon: the daemon's word, once it is given.
    Parent(Result<(), String>),
    /// The daemon: it tells the parent through this pipe.
    Child(Ready),
}

/// The daemon's word to the command that started it: "ok", or the error. Foreground mounts
/// have nobody to tell; with a log file, they keep their own stderr for the last word.
pub(super) struct Ready {
    /// Daemonized: the pipe to the parent.
    parent: Option<OwnedFd>,
    /// In the foreground with a log file: the command's own stderr, the log going to the file.
    own_stderr: Option<OwnedFd>,
}

impl Ready {
    /// Stays in the foreground; with `log`, the log goes there from now on (before the store
    /// is opened: its scan warnings and recovery steps are in the file too).
    pub(super) fn foreground(log: Option<&File>) -> Ready {
        let own_stderr = log.and_then(|f| {
            let own = nix::unistd::dup(std::io::stderr()).ok()?;
            nix::unistd::dup2_stderr(f).ok()?;
            Some(own)
        });
        Ready {
            parent: None,
            own_stderr,
        }
    }

    /// The mount is ready: tells the parent and detaches from its terminal or pipes.
    pub(super) fn ok(&mut self, log: Option<File>) {
        if let Some(w) = self.parent.take() {
            let _ = File::from(w).write_all(b"ok");
            detach_stdio(log);
        }
    }

    /// The daemon failed: in the foreground, returns `msg` for the command to print (with a
    /// log file, also logged there, and stderr is the command's own again). Daemonized, before
    /// the mount was ready, the parent prints it (and exits 1); the daemon writes it to the
    /// log file, if one was given (its stderr), and exits 1 quietly, since its stderr is
    /// otherwise the parent's.
    pub(super) fn failed(self, msg: String, log_file: bool) -> String {
        if let Some(own) = self.own_stderr {
            eprintln!("imagefs: {msg}");
            let _ = nix::unistd::dup2_stderr(&own);
        }
        let Some(w) = self.parent else {
            return msg;
        };
        let _ = File::from(w).write_all(msg.as_bytes());
        if log_file {
            eprintln!("imagefs: {msg}");
        }
        std::process::exit(1);
    }
}

/// Forks the daemon off (its own session); with `log`, the daemon's stderr goes there.
/// Call it while this process has one thread.
pub(super) fn fork(log: Option<&File>) -> Result<Forked, String> {
    let (r, w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: fork is unsafe in a process with other threads (the child would inherit
    // their locks held). `daemon::mount` calls this before the store is opened, the
    // first thing that starts threads, so this process has one thread.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut msg = String::new();
            let _ = File::from(r).read_to_string(&mut msg);
            Ok(Forked::Parent(if msg == "ok" {
                Ok(())
            } else if msg.is_empty() {
                Err("the daemon exited before the mount was ready".into())
            } else {
                Err(msg)
            }))
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            if let Some(f) = log {
                // The daemon's whole log goes to the file; the parent reports errors.
                let _ = nix::unistd::dup2_stderr(f);
            }
            Ok(Forked::Child(Ready {
                parent: Some(w),
                own_stderr: None,
            }))
        }
    }
}

/// Detaches the daemon from the terminal or pipe that started it: stdin and stdout go to
/// /dev/null, stderr (the log) to the log file if one was given, else to /dev/null.
fn detach_stdio(log: Option<File>) {
    let Ok(null) = File::options().read(true).write(true).open("/dev/null") else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(&null);
    let _ = nix::unistd::dup2_stdout(&null);
    let _ = nix::unistd::dup2_stderr(log.as_ref().unwrap_or(&null));
}
