//! Child processes that die with this one, even when it is killed with
//! SIGKILL and has no chance to stop them.
//!
//! Each child asks the kernel for SIGKILL when its parent dies
//! (`PR_SET_PDEATHSIG`). The kernel sends it when the *thread* that forked
//! the child exits, not the process: a tokio worker or blocking thread that
//! spawned it may exit long before the process does, killing a healthy
//! child. So every child is forked by one thread that is never stopped and
//! lives exactly as long as the process.

use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::process::{Child, Command};

/// A command to spawn, the runtime its `Child` is driven by, and where to
/// send the result.
struct Request {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

/// Spawns `command` (on the current tokio runtime) as a child that gets
/// SIGKILL when this process dies. Blocks only for the fork and exec.
pub fn spawn(mut command: Command) -> std::io::Result<Child> {
    die_with_parent(&mut command);
    let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let (reply, answer) = mpsc::channel();
    spawner()
        .send(Request {
            command,
            runtime,
            reply,
        })
        .map_err(|_| std::io::Error::other("the spawning thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawning thread did not answer"))?
}

/// The one spawning thread, started on first use. Its loop never ends, so
/// it lives until the process exits.
fn spawner() -> &'static mpsc::Sender<Request> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (send, requests) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // `send` is kept in the static, so this loop never ends.
                for mut request in requests {
                    // The child's exit is watched by the runtime's driver.
                    let _entered = request.runtime.enter();
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("a thread to spawn child processes can be started");
        send
    })
}

/// Makes the child ask for SIGKILL on its parent's death, and exit at once
/// if the parent died before it asked (it would never get the signal).
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl, getppid and _exit, which are async-signal-safe, and
    // allocates nothing (`last_os_error` holds only errno).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // Reparented: the parent died between fork and prctl.
                libc::_exit(1);
            }
            Ok(())
        });
    }
}
