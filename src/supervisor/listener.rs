//! The public listening socket: bound here with socket2, or received from systemd.
//!
//! With socket activation (`LISTEN_FDS`/`LISTEN_PID`, see `sd_listen_fds(3)`), systemd passes
//! the socket as descriptor 3; `--listen` is then ignored. Either way the socket is
//! close-on-exec (workers never accept: they get connections one by one) and non-blocking.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::SupervisorError;

/// First descriptor passed by systemd.
const SD_LISTEN_FDS_START: RawFd = 3;

/// Binds `addr` with `SO_REUSEADDR` and the given backlog.
pub fn bind(addr: SocketAddr, backlog: i32) -> Result<std::net::TcpListener, SupervisorError> {
    let err = |what: &'static str| move |e| SupervisorError::Listen(addr.to_string(), what, e);
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(err("create socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(err("set SO_REUSEADDR"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&addr.into()).map_err(err("bind"))?;
    // Accepted sockets inherit it (Linux; checked by a test below), so neither the primary nor
    // the worker spends a system call per connection on it.
    socket
        .set_tcp_nodelay(true)
        .map_err(err("set TCP_NODELAY"))?;
    defer_accept(&socket).map_err(err("set TCP_DEFER_ACCEPT"))?;
    socket.listen(backlog).map_err(err("listen"))?;
    socket
        .set_nonblocking(true)
        .map_err(err("set non-blocking"))?;
    Ok(socket.into())
}

/// `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` once its first bytes arrived, so
/// the request head is almost always complete when the primary first looks at it (routed in the
/// accept loop, no task, no reactor registration), and clients that connect without sending are
/// kept out of the accept queue for a moment.
fn defer_accept(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid c_int that outlives the
    // call, on a socket descriptor kept open by the borrow.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Takes the socket passed by systemd, if this process was socket-activated.
///
/// Must run before any other descriptor is opened or any thread reads the environment.
pub fn from_systemd() -> Result<Option<std::net::TcpListener>, SupervisorError> {
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = fds
        .parse()
        .map_err(|_| SupervisorError::Activation(format!("LISTEN_FDS=`{fds}` is not a number")))?;
    if n < 1 {
        return Ok(None);
    }
    if n > 1 {
        tracing::warn!("systemd passed {n} sockets; using the first (fd 3) and closing the others");
        for fd in SD_LISTEN_FDS_START + 1..SD_LISTEN_FDS_START + n {
            // SAFETY: systemd passed these descriptors to us (LISTEN_FDS) and nothing else in
            // this process refers to them; taking ownership closes them on drop.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    // SAFETY: LISTEN_PID names this process, so descriptor 3 was passed by systemd for us to
    // own, and nothing else in the process has taken it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    let socket = Socket::from(fd);
    match socket.r#type() {
        Ok(t) if t == Type::STREAM => {}
        _ => {
            return Err(SupervisorError::Activation(
                "the socket passed by systemd is not a TCP stream socket (ListenStream= expected)"
                    .into(),
            ));
        }
    }
    socket
        .set_cloexec(true)
        .and_then(|_| socket.set_nonblocking(true))
        .and_then(|_| socket.set_tcp_nodelay(true))
        .map_err(|e| {
            SupervisorError::Activation(format!("cannot configure the passed socket: {e}"))
        })?;
    Ok(Some(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Workers make no system call on a received connection: they rely on the socket accepted
    /// from our listener having TCP_NODELAY already (inherited from the listener).
    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!client.nodelay().unwrap());
        // TCP_DEFER_ACCEPT: the connection is accepted once data arrived.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY not inherited");
    }
}
