//! Process groups for commands: each command starts as the leader of its own group, dies with
//! the server, and is stopped as a group (the command and every process it started).

use std::io;
use std::process::Stdio;
use std::sync::{mpsc, OnceLock};

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A signal sent to a whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupSignal {
    /// Asks the group to stop (SIGTERM).
    Terminate,
    /// Stops the group at once (SIGKILL).
    Kill,
}

/// A command to start on the launcher thread, in the caller's runtime.
struct Launch {
    command: Command,
    runtime: tokio::runtime::Handle,
    started: oneshot::Sender<io::Result<Child>>,
}

/// The thread that forks every command. The kernel's parent-death signal follows the thread
/// that forked a child, not its process: a command forked on a runtime thread that later ends
/// (a blocking-pool thread, or a worker handed off by `block_in_place`) would be killed with it.
/// This thread lives as long as the process.
fn launcher() -> &'static mpsc::Sender<Launch> {
    static LAUNCHER: OnceLock<mpsc::Sender<Launch>> = OnceLock::new();
    LAUNCHER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Launch>();
        std::thread::Builder::new()
            .name("command-launcher".to_owned())
            .spawn(move || {
                for mut launch in receiver {
                    let _runtime = launch.runtime.enter();
                    // The caller may have gone; then dropping the child kills it (kill_on_drop).
                    let _ = launch.started.send(launch.command.spawn());
                }
            })
            .expect("start the command launcher thread");
        sender
    })
}

/// Starts `command` with piped stdin, stdout and stderr as the leader of a new process group,
/// set to receive SIGKILL when this process ends. Must be called inside a tokio runtime.
pub(super) async fn spawn_group_leader(mut command: Command) -> io::Result<Child> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only calls the
    // async-signal-safe functions prctl and getppid.
    unsafe {
        command.pre_exec(move || die_with_parent(parent));
    }
    let (started, result) = oneshot::channel();
    launcher()
        .send(Launch {
            command,
            runtime: tokio::runtime::Handle::current(),
            started,
        })
        .map_err(|_| io::Error::other("the command launcher thread has stopped"))?;
    result
        .await
        .map_err(|_| io::Error::other("the command launcher thread has stopped"))?
}

/// In the child before exec: asks the kernel for SIGKILL when the parent dies, so a server
/// killed without a chance to clean up (SIGKILL, a crash) leaves no command running (the
/// signal reaches the command itself; what it started in turn is its own to end).
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    // The parent may have died between fork and prctl; then no signal will ever come.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::other(
            "the server exited while starting the command",
        ));
    }
    Ok(())
}

/// Sends `signal` to every process of the group `group` (the leader's pid). A group that is
/// already gone is not an error.
pub(super) fn signal_group(group: u32, signal: GroupSignal) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    if group <= 1 {
        return;
    }
    let number = match signal {
        GroupSignal::Terminate => libc::SIGTERM,
        GroupSignal::Kill => libc::SIGKILL,
    };
    // SAFETY: killpg takes two integers; a group that no longer exists yields ESRCH.
    unsafe {
        libc::killpg(group, number);
    }
}

/// A short description of how a process ended without success.
pub(super) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("the command exited with status {code}"),
        (None, Some(signal)) => format!("the command was killed by {}", signal_name(signal)),
        (None, None) => format!("the command ended abnormally ({status})"),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("signal {signal} ({name})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_described_by_status_or_signal() {
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(3 << 8)),
            "the command exited with status 3"
        );
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(libc::SIGKILL)),
            "the command was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(64)),
            "the command was killed by signal 64"
        );
    }
}
