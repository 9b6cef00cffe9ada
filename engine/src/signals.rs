//! Stopping on a signal: SIGINT (Ctrl-C), SIGTERM (what SLURM sends at a time limit or on
//! `scancel`, and what `kill` sends by default) and SIGHUP (a closed terminal) all stop a run the
//! same way: running tasks are cancelled (shell commands' process groups killed), and what is
//! still running after [`GRACE`] is abandoned, since an unfinished task leaves nothing in the
//! cache. The next run resumes from the finished tasks.

use std::time::Duration;

/// How long a cancelled run waits for its running tasks before it exits without them.
pub const GRACE: Duration = Duration::from_secs(3);

/// Resolves when the process receives SIGINT, SIGTERM or SIGHUP, with the signal's name. From
/// the first call on, those signals no longer end the process by themselves: call it once, early,
/// and keep the future.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| signal(kind).expect("tokio can install a signal handler");
    let (mut int, mut term, mut hup) = (
        listen(SignalKind::interrupt()),
        listen(SignalKind::terminate()),
        listen(SignalKind::hangup()),
    );
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}
