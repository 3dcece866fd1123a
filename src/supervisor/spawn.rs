//! Starting worker processes: re-executing our own binary from one long-lived thread.
//!
//! A multi-threaded tokio process must never `fork()` and carry on: workers are started with
//! fork+exec (`Command`). `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! so every worker is spawned from this one thread, which lives as long as the primary. Workers
//! also exit when their control channel reaches end of file, and check at start that the
//! primary that spawned them is still their parent.
//!
//! The child's ends of its two socket pairs are the only descriptors it inherits on purpose: they
//! are made inheritable in the child between fork and exec, and their numbers are passed in the
//! environment. Everything else the primary holds is close-on-exec.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::ipc::channel::seqpacket_pair;
use crate::ipc::message::MemberId;
use crate::worker::WorkerEnv;

use super::SupervisorError;

/// A started worker process and the primary's ends of its sockets.
#[derive(Debug)]
pub struct Spawned {
    /// The child process (reaped by tokio).
    pub child: tokio::process::Child,
    /// OS process id.
    pub pid: u32,
    /// Control channel (seqpacket).
    pub ctl: OwnedFd,
    /// Bus (stream).
    pub bus: std::os::unix::net::UnixStream,
}

struct Request {
    slot: usize,
    member: MemberId,
    env: Arc<[(String, String)]>,
    reply: oneshot::Sender<Result<Spawned, SupervisorError>>,
}

/// Handle to the spawner thread.
#[derive(Debug, Clone)]
pub struct Spawner {
    tx: std::sync::mpsc::Sender<Request>,
}

/// Environment variables that belong to the primary only (socket activation, sd_notify).
const PRIMARY_ONLY_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

impl Spawner {
    /// Starts the spawner thread. `exe` is re-executed with `args` for every worker.
    pub fn start(
        rt: tokio::runtime::Handle,
        exe: PathBuf,
        args: Vec<std::ffi::OsString>,
    ) -> Result<Self, SupervisorError> {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("sio-spawner".into())
            .spawn(move || {
                // tokio::process needs the runtime to reap children; the fork happens here.
                let _guard = rt.enter();
                while let Ok(req) = rx.recv() {
                    let res = spawn_one(&exe, &args, req.slot, req.member, &req.env);
                    let _ = req.reply.send(res);
                }
            })
            .map_err(|e| SupervisorError::Spawn("start the spawner thread".into(), e))?;
        Ok(Self { tx })
    }

    /// Starts one worker for `slot`, with `env` (the config file's variables) added to the
    /// primary's environment.
    pub async fn spawn(
        &self,
        slot: usize,
        member: MemberId,
        env: Arc<[(String, String)]>,
    ) -> Result<Spawned, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                slot,
                member,
                env,
                reply,
            })
            .map_err(|_| {
                SupervisorError::Spawn(
                    "reach the spawner thread".into(),
                    std::io::Error::other("spawner thread stopped"),
                )
            })?;
        rx.await.map_err(|_| {
            SupervisorError::Spawn(
                "reach the spawner thread".into(),
                std::io::Error::other("spawner thread stopped"),
            )
        })?
    }
}

fn spawn_one(
    exe: &PathBuf,
    args: &[std::ffi::OsString],
    slot: usize,
    member: MemberId,
    extra_env: &[(String, String)],
) -> Result<Spawned, SupervisorError> {
    let io_err = |what: &str, e: std::io::Error| SupervisorError::Spawn(what.to_string(), e);
    let (ctl_primary, ctl_child) = seqpacket_pair()
        .map_err(|e| io_err("create control socket pair", std::io::Error::other(e)))?;
    // std's UnixStream::pair creates close-on-exec sockets.
    let (bus_primary, bus_child) =
        std::os::unix::net::UnixStream::pair().map_err(|e| io_err("create bus socket pair", e))?;
    let bus_child: OwnedFd = bus_child.into();

    let env = WorkerEnv {
        slot,
        member,
        ctl_fd: ctl_child.as_raw_fd(),
        bus_fd: bus_child.as_raw_fd(),
        primary_pid: std::process::id(),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args).envs(extra_env.iter().map(|(k, v)| (k, v)));
    cmd.env(WorkerEnv::VAR, env.encode())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    for var in PRIMARY_ONLY_ENV {
        cmd.env_remove(var);
    }
    let inherit: [RawFd; 2] = [ctl_child.as_raw_fd(), bus_child.as_raw_fd()];
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, fcntl, setpgid, getppid, kill); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the primary. Fires when the spawning thread (this long-lived thread) exits.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The primary may already be gone (then we were re-parented before prctl took effect).
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // Our own process group: a terminal's Ctrl-C reaches the primary only, which then
            // drains the workers in order.
            libc::setpgid(0, 0);
            for fd in inherit {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| io_err(&format!("execute {}", exe.display()), e))?;
    let pid = child.id().unwrap_or(0);
    // The child has its copies now; close ours.
    drop(ctl_child);
    drop(bus_child);
    Ok(Spawned {
        child,
        pid,
        ctl: ctl_primary,
        bus: bus_primary,
    })
}
