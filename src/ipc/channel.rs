//! A typed, message-preserving channel over a `SOCK_SEQPACKET` Unix socket that can carry file
//! descriptors with each message (up to [`MAX_FDS`]).
//!
//! Each datagram is `[fd count: u8][postcard-encoded message]`. The count is the manifest: the
//! receiver checks that exactly that many descriptors arrived (and that the kernel did not
//! truncate the control data, `MSG_CTRUNC`), so a descriptor can never be silently lost or
//! attached to the wrong message. Descriptors are received with `MSG_CMSG_CLOEXEC`, because
//! `FD_CLOEXEC` is per descriptor and does not travel with `SCM_RIGHTS`. When a message is
//! refused (truncated, manifest mismatch, undecodable), every descriptor that did arrive with it
//! is closed, and the error says whether the channel can go on
//! ([`IpcError::is_recoverable`](super::IpcError::is_recoverable)).
//!
//! The primary talks to each worker over one such channel: client connections, session
//! registrations, look-ups, readiness and heartbeats. Bulk adapter traffic uses a separate byte
//! stream (see [`frame`](super::frame)) so a large broadcast never delays a connection hand-off.

use std::io::IoSlice;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::IpcError;

/// Largest encoded message accepted on a channel. Control messages are small; batches of
/// session ids are split by the sender to stay under this.
pub const MAX_MESSAGE: usize = 60 * 1024;

/// Most descriptors carried by one message (hand-offs are batched up to this).
pub const MAX_FDS: usize = 64;

/// Creates a connected pair of non-blocking, close-on-exec `SOCK_SEQPACKET` sockets.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), IpcError> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(|e| IpcError::Socket("socketpair(SOCK_SEQPACKET)", e.into()))
}

/// One end of a seqpacket channel, shared by a reading task and a writing task.
#[derive(Debug)]
struct Socket {
    fd: AsyncFd<OwnedFd>,
}

/// Sending half of a typed channel. Cloning shares the socket.
#[derive(Debug)]
pub struct Sender<M> {
    sock: Arc<Socket>,
    _msg: PhantomData<fn(M)>,
}

impl<M> Clone for Sender<M> {
    fn clone(&self) -> Self {
        Self {
            sock: self.sock.clone(),
            _msg: PhantomData,
        }
    }
}

/// Receiving half of a typed channel.
#[derive(Debug)]
pub struct Receiver<M> {
    sock: Arc<Socket>,
    buf: Box<[u8]>,
    cmsg: CmsgBuf,
    _msg: PhantomData<fn() -> M>,
}

/// Wraps one end of a seqpacket pair into a typed sender and receiver.
///
/// `Out` is what this side sends, `In` what it receives. Must be called inside a tokio runtime.
/// (The unit tests below show a round trip.)
pub fn channel<Out, In>(fd: OwnedFd) -> Result<(Sender<Out>, Receiver<In>), IpcError> {
    set_nonblocking(fd.as_fd())?;
    // SAFETY: `fd` is an open descriptor that the AsyncFd takes ownership of (`OwnedFd`), so it
    // stays open and refers to the same socket until the AsyncFd is dropped.
    let fd =
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
            .map_err(|e| IpcError::Socket("register seqpacket socket", e.into()))?;
    let sock = Arc::new(Socket { fd });
    Ok((
        Sender {
            sock: sock.clone(),
            _msg: PhantomData,
        },
        Receiver {
            sock,
            buf: vec![0u8; MAX_MESSAGE + 1].into_boxed_slice(),
            cmsg: CmsgBuf::for_fds(MAX_FDS),
            _msg: PhantomData,
        },
    ))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), IpcError> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| IpcError::Socket("fcntl", e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| IpcError::Socket("fcntl", e.into()))?;
    Ok(())
}

impl<M: Serialize> Sender<M> {
    /// Sends one message with its descriptors (at most [`MAX_FDS`]).
    ///
    /// The descriptors are duplicated into the peer by the kernel; the caller still owns (and
    /// must close) its copies, which it does by dropping the `OwnedFd`s it lent here.
    pub async fn send(&self, msg: &M, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        if fds.len() > MAX_FDS {
            return Err(IpcError::Manifest {
                expected: MAX_FDS,
                got: fds.len(),
            });
        }
        let mut data = Vec::with_capacity(64);
        data.push(fds.len() as u8);
        let data = postcard::to_extend(msg, data).map_err(IpcError::Encode)?;
        if data.len() > MAX_MESSAGE {
            return Err(IpcError::TooLarge(data.len()));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut guard = self
                .sock
                .fd
                .writable()
                .await
                .map_err(|e| IpcError::Socket("wait writable", e))?;
            let res = guard.try_io(|inner| {
                let iov = [IoSlice::new(&data)];
                let cmsgs = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
                socket::sendmsg::<()>(
                    inner.as_raw_fd(),
                    &iov,
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match res {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EPIPE) => {
                    return Err(IpcError::Closed);
                }
                Ok(Err(e)) => return Err(IpcError::Socket("sendmsg", e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl<M: DeserializeOwned> Receiver<M> {
    /// Receives the next message and the descriptors that came with it, in order.
    ///
    /// Returns `Ok(None)` once the peer has closed its end (the process exited). A message whose
    /// descriptors did not all fit this process's descriptor table is refused (see
    /// [`recv_partial`](Self::recv_partial) to take what arrived).
    pub async fn recv(&mut self) -> Result<Option<(M, Vec<OwnedFd>)>, IpcError> {
        match self.recv_partial().await? {
            None => Ok(None),
            Some((msg, fds, 0)) => Ok(Some((msg, fds))),
            Some((_, fds, _)) => {
                drop(fds);
                Err(IpcError::Truncated("control data (MSG_CTRUNC)"))
            }
        }
    }

    /// Like [`recv`](Self::recv), but a message whose descriptors did not all fit this
    /// process's descriptor table (`EMFILE`: the kernel installs them in order until one fails,
    /// closes the rest and sets `MSG_CTRUNC`) is returned with the descriptors that arrived (the
    /// first ones of the manifest) and how many were lost.
    pub async fn recv_partial(&mut self) -> Result<Option<(M, Vec<OwnedFd>, usize)>, IpcError> {
        loop {
            let mut guard = self
                .sock
                .fd
                .readable()
                .await
                .map_err(|e| IpcError::Socket("wait readable", e))?;
            let buf = &mut self.buf;
            let cmsg = &mut self.cmsg;
            let res = guard.try_io(|inner| recv_one(inner.as_raw_fd(), buf, cmsg));
            match res {
                Ok(Ok(Ok(None))) => return Ok(None),
                Ok(Ok(Ok(Some((len, fds, truncated))))) => {
                    let expected = usize::from(self.buf[0]);
                    let lost = if truncated && fds.len() < expected {
                        expected - fds.len()
                    } else if fds.len() != expected {
                        // The manifest disagrees with what arrived: drop the strays (closing
                        // them) and report it rather than misattribute a descriptor.
                        return Err(IpcError::Manifest {
                            expected,
                            got: fds.len(),
                        });
                    } else {
                        0
                    };
                    let msg = postcard::from_bytes(&self.buf[1..len]).map_err(IpcError::Decode)?;
                    return Ok(Some((msg, fds, lost)));
                }
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(IpcError::Socket("recvmsg", e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Message length, its descriptors, and whether the kernel truncated the control data.
type Received = Option<(usize, Vec<OwnedFd>, bool)>;

/// One `recvmsg`; `Ok(None)` on EOF. Runs inside `try_io`, so `WouldBlock` must surface as an
/// `io::Error` for tokio to clear readiness; everything else is wrapped as `Ok(Err(..))`.
///
/// The control buffer is walked here rather than with nix's `RecvMsg::cmsgs()`: nix 0.30
/// refuses to iterate (`ENOBUFS`) when `MSG_CTRUNC` is set, yet the kernel has already installed
/// every descriptor that fitted into this process's table. Each of them is wrapped in an
/// [`OwnedFd`] (and so closed when the error is reported) before truncation is checked.
fn recv_one(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut CmsgBuf,
) -> std::io::Result<Result<Received, IpcError>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null name and control, zero lengths).
    let mut mhdr: libc::msghdr = unsafe { std::mem::zeroed() };
    mhdr.msg_iov = &mut iov;
    mhdr.msg_iovlen = 1;
    mhdr.msg_control = cmsg.as_mut_ptr();
    mhdr.msg_controllen = cmsg.len() as _;
    // SAFETY: `mhdr` points at one iovec covering `buf` and at the control buffer, both valid
    // for writes of the given lengths for the whole call; no address is requested.
    let n = unsafe { libc::recvmsg(fd, &mut mhdr, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Err(std::io::ErrorKind::WouldBlock.into()),
            Some(libc::ECONNRESET) => Ok(Ok(None)),
            _ => Ok(Err(IpcError::Socket("recvmsg", e))),
        };
    }
    let len = n as usize;
    // Take ownership of every received descriptor first, so none leaks on an error path.
    let fds = take_fds(&mhdr);
    // MSG_CTRUNC: the control buffer always fits MAX_FDS descriptors, so truncation means
    // this process's descriptor table is full; the caller decides (see `recv_partial`).
    let truncated = mhdr.msg_flags & libc::MSG_CTRUNC != 0;
    if mhdr.msg_flags & libc::MSG_TRUNC != 0 {
        return Ok(Err(IpcError::Truncated("message (MSG_TRUNC)")));
    }
    if len == 0 {
        // A zero-length datagram is never sent by us: SOCK_SEQPACKET reports EOF this way.
        return Ok(Ok(None));
    }
    Ok(Ok(Some((len, fds, truncated))))
}

/// Every `SCM_RIGHTS` descriptor in the control data `recvmsg` just filled in, owned.
fn take_fds(mhdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    let start = mhdr.msg_control as usize;
    // `msg_controllen` is `size_t` with glibc but `socklen_t` with musl.
    #[allow(clippy::unnecessary_cast)]
    let end = start + mhdr.msg_controllen as usize;
    // SAFETY: `mhdr` was just filled in by a successful recvmsg; `msg_control` and the
    // `msg_controllen` it set describe the control data the kernel wrote (possibly truncated,
    // but always whole headers), which is exactly what CMSG_FIRSTHDR/CMSG_NXTHDR walk.
    let mut hdr = unsafe { libc::CMSG_FIRSTHDR(mhdr) };
    while !hdr.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR only return headers lying wholly inside the control
        // buffer, which is aligned for `cmsghdr` (see `CmsgBuf`).
        let h = unsafe { &*hdr };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA points just past the header, inside the same buffer.
            let data = unsafe { libc::CMSG_DATA(hdr) } as usize;
            // SAFETY: CMSG_LEN is a pure size computation.
            let header_len = unsafe { libc::CMSG_LEN(0) } as usize;
            // Never read past what the kernel wrote, whatever the header claims.
            let payload = (h.cmsg_len as usize)
                .saturating_sub(header_len)
                .min(end.saturating_sub(data));
            for i in 0..payload / std::mem::size_of::<RawFd>() {
                // SAFETY: `data + i * 4 + 4 <= end`, inside the control buffer; the descriptor
                // array need not be aligned, hence read_unaligned.
                let raw = unsafe { std::ptr::read_unaligned((data as *const RawFd).add(i)) };
                // SAFETY: the kernel just installed `raw` in our descriptor table for this
                // message (SCM_RIGHTS); nothing else refers to it, so we are its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: `hdr` is a header inside the control data described by `mhdr`.
        hdr = unsafe { libc::CMSG_NXTHDR(mhdr, hdr) };
    }
    fds
}

/// A control-message buffer aligned for `cmsghdr` (a `Vec<u8>` only promises byte alignment).
#[derive(Debug)]
struct CmsgBuf {
    words: Vec<u64>,
    len: usize,
}

impl CmsgBuf {
    /// Room for one `SCM_RIGHTS` message of `fds` descriptors.
    fn for_fds(fds: usize) -> Self {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let len = unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) } as usize;
        Self::with_len(len)
    }

    /// Exactly `len` bytes of control space.
    fn with_len(len: usize) -> Self {
        Self {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.words.as_mut_ptr().cast()
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl IpcError {
    /// Whether the error concerns one message only, which the receiver can drop (its
    /// descriptors are already closed) and go on with the next: truncation, a descriptor count
    /// that does not match the manifest, a message that cannot be decoded or encoded. Socket
    /// failures and a closed peer end the channel.
    pub fn is_recoverable(&self) -> bool {
        match self {
            IpcError::Truncated(_)
            | IpcError::Manifest { .. }
            | IpcError::Decode(_)
            | IpcError::Encode(_)
            | IpcError::TooLarge(_) => true,
            IpcError::Socket(..) | IpcError::Closed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn message_and_fd_cross_the_channel() {
        let (a, b) = seqpacket_pair().unwrap();
        let (tx, _rx_a) = channel::<Vec<u32>, Vec<u32>>(a).unwrap();
        let (_tx_b, mut rx) = channel::<Vec<u32>, Vec<u32>>(b).unwrap();

        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        let right: OwnedFd = right.into();
        tx.send(&vec![1, 2, 3], &[right.as_fd()]).await.unwrap();
        drop(right); // the sender closes its copy once passed

        let (msg, fds) = rx.recv().await.unwrap().unwrap();
        assert_eq!(msg, vec![1, 2, 3]);
        let fd = fds
            .into_iter()
            .next()
            .expect("descriptor travelled with its message");
        // Received descriptors are close-on-exec.
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
        let mut received = std::os::unix::net::UnixStream::from(fd);
        received.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        left.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn a_batch_of_descriptors_keeps_its_order() {
        let (a, b) = seqpacket_pair().unwrap();
        let (tx, _rx_a) = channel::<u32, u32>(a).unwrap();
        let (_tx_b, mut rx) = channel::<u32, u32>(b).unwrap();
        let pairs: Vec<_> = (0..MAX_FDS)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        let sent: Vec<OwnedFd> = pairs
            .iter()
            .map(|(_, r)| r.try_clone().unwrap().into())
            .collect();
        let borrowed: Vec<_> = sent.iter().map(|f| f.as_fd()).collect();
        tx.send(&7, &borrowed).await.unwrap();
        drop(sent);
        let (msg, fds) = rx.recv().await.unwrap().unwrap();
        assert_eq!(msg, 7);
        assert_eq!(fds.len(), MAX_FDS);
        for (i, fd) in fds.into_iter().enumerate() {
            let mut s = std::os::unix::net::UnixStream::from(fd);
            s.write_all(&[i as u8]).unwrap();
            let mut got = [0u8; 1];
            (&pairs[i].0).read_exact(&mut got).unwrap();
            assert_eq!(got[0], i as u8, "descriptor {i} arrived in place");
        }
        let too_many: Vec<_> = (0..=MAX_FDS).map(|_| pairs[0].1.as_fd()).collect();
        assert!(tx.send(&1, &too_many).await.is_err());
    }

    #[tokio::test]
    async fn eof_when_peer_closes() {
        let (a, b) = seqpacket_pair().unwrap();
        let (_tx, mut rx) = channel::<u8, u8>(a).unwrap();
        drop(b);
        assert!(rx.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn manifest_mismatch_is_reported() {
        let (a, b) = seqpacket_pair().unwrap();
        let (_tx, mut rx) = channel::<u8, u8>(b).unwrap();
        // Claim one descriptor but attach none.
        let data = [1u8, 7];
        socket::send(a.as_raw_fd(), &data, MsgFlags::empty()).unwrap();
        match rx.recv().await {
            Err(IpcError::Manifest {
                expected: 1,
                got: 0,
            }) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }

    /// Reads from `s` until EOF; panics if the stream is still open after a few seconds (its
    /// other end, a descriptor we passed, was leaked somewhere).
    fn assert_peer_closed(s: &mut std::os::unix::net::UnixStream, what: &str) {
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        let mut b = [0u8; 8];
        match s.read(&mut b) {
            Ok(0) => {}
            other => panic!("{what}: the passed descriptor is still open somewhere: {other:?}"),
        }
    }

    #[tokio::test]
    async fn truncated_descriptors_are_closed_and_the_channel_goes_on() {
        let (a, b) = seqpacket_pair().unwrap();
        let (tx, _rx_a) = channel::<u32, u32>(a).unwrap();
        let (_tx_b, mut rx) = channel::<u32, u32>(b).unwrap();
        // Room for one descriptor only: the kernel installs what fits, sets MSG_CTRUNC and
        // discards the rest.
        rx.cmsg = CmsgBuf::for_fds(1);
        let mut pairs: Vec<_> = (0..6)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        {
            let sent: Vec<OwnedFd> = pairs
                .iter()
                .map(|(_, r)| r.try_clone().unwrap().into())
                .collect();
            let borrowed: Vec<_> = sent.iter().map(|f| f.as_fd()).collect();
            tx.send(&1, &borrowed).await.unwrap();
        }
        // The test's own copies of the passed ends go too: only the receiver may hold them now.
        let mut mine: Vec<_> = pairs.drain(..).map(|(l, _)| l).collect();
        let err = rx.recv().await.unwrap_err();
        assert!(
            matches!(err, IpcError::Truncated(_)),
            "unexpected error: {err:?}"
        );
        assert!(err.is_recoverable());
        for (i, s) in mine.iter_mut().enumerate() {
            assert_peer_closed(s, &format!("descriptor {i}"));
        }
        // The bad message is gone; the next one arrives normally.
        rx.cmsg = CmsgBuf::for_fds(MAX_FDS);
        tx.send(&2, &[]).await.unwrap();
        let (msg, fds) = rx.recv().await.unwrap().unwrap();
        assert_eq!((msg, fds.len()), (2, 0));
    }

    #[tokio::test]
    async fn descriptors_of_a_refused_message_are_closed() {
        let (a, b) = seqpacket_pair().unwrap();
        let (_tx, mut rx) = channel::<u8, u8>(b).unwrap();
        let (mut mine, passed) = std::os::unix::net::UnixStream::pair().unwrap();
        // Announces two descriptors, carries one.
        let data = [2u8, 7];
        let iov = [IoSlice::new(&data)];
        let raw = [passed.as_raw_fd()];
        socket::sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(passed);
        let err = rx.recv().await.unwrap_err();
        assert!(matches!(
            err,
            IpcError::Manifest {
                expected: 2,
                got: 1
            }
        ));
        assert!(err.is_recoverable());
        assert_peer_closed(&mut mine, "manifest mismatch");
        drop(a);
        let err = rx.recv().await;
        assert!(matches!(err, Ok(None)), "{err:?}");
    }

    #[test]
    fn channel_failures_are_not_recoverable() {
        assert!(!IpcError::Closed.is_recoverable());
        assert!(!IpcError::Socket("recvmsg", std::io::Error::other("x")).is_recoverable());
    }

    #[tokio::test]
    async fn oversized_message_is_refused_by_sender() {
        let (a, _b) = seqpacket_pair().unwrap();
        let (tx, _rx) = channel::<Vec<u8>, u8>(a).unwrap();
        let big = vec![0u8; MAX_MESSAGE + 10];
        assert!(matches!(
            tx.send(&big, &[]).await,
            Err(IpcError::TooLarge(_))
        ));
    }
}
