//! Passing connections between processes: a `SOCK_SEQPACKET` socket pair
//! whose every record is a connection's table index (4 bytes) with the
//! connection's descriptor attached (`SCM_RIGHTS`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A connected pair of record sockets (close-on-exec both).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array we own.
    let made = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if made != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just made and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A zeroed control buffer with room for `payload` bytes of one control
/// message; u64s, as it is read as a `cmsghdr`, which is 8-aligned.
fn control_buffer(payload: u32) -> Vec<u64> {
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    vec![0u64; space.div_ceil(8)]
}

/// A message header over one buffer and a control buffer; both must
/// outlive its use.
fn message_header(iov: &mut libc::iovec, control: &mut [u64]) -> libc::msghdr {
    // SAFETY: msghdr is plain data, valid zeroed.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(control) as _;
    message
}

/// Sends `data` with the descriptors `fds` attached, once, blocking or not
/// as the socket is.
pub fn send_with_fds(socket: RawFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    let mut control = control_buffer(payload);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let message = message_header(&mut iov, &mut control);
    // SAFETY: the control buffer has room for one header and `payload`.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(
            raw.as_ptr(),
            libc::CMSG_DATA(header).cast::<RawFd>(),
            raw.len(),
        );
    }
    // SAFETY: sendmsg reads the message we built.
    let sent = unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != data.len() {
        return Err(io::Error::other("a short send of a descriptor record"));
    }
    Ok(())
}

/// Receives one record of at most `data.len()` bytes and at most `max_fds`
/// descriptors (close-on-exec); returns the bytes read and the descriptors.
/// A record that came with more descriptors than asked for is an error
/// (the extra ones are closed by the kernel).
pub fn recv_with_fds(
    socket: RawFd,
    data: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let payload = (max_fds * std::mem::size_of::<RawFd>()) as u32;
    let mut control = control_buffer(payload);
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut message = message_header(&mut iov, &mut control);
    // SAFETY: recvmsg writes into the buffers we own.
    let read = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    if message.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "more descriptors than expected in a record",
        ));
    }
    Ok((read as usize, fds))
}

/// One end of a connection channel, on the tokio reactor.
pub struct ConnectionChannel {
    socket: AsyncFd<OwnedFd>,
}

impl ConnectionChannel {
    /// Wraps one end of [`pair`] (made non-blocking here).
    pub fn new(socket: OwnedFd) -> io::Result<Self> {
        // SAFETY: fcntl on the descriptor we own.
        unsafe {
            let flags = libc::fcntl(socket.as_raw_fd(), libc::F_GETFL);
            if flags < 0
                || libc::fcntl(socket.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the descriptor is owned by the `OwnedFd` the AsyncFd
        // holds, and is neither replaced nor closed while it is registered.
        let socket = unsafe { AsyncFd::register(socket)? };
        Ok(Self { socket })
    }

    /// Sends connection `fd` as table entry `index`.
    pub async fn send(&self, index: u32, fd: BorrowedFd<'_>) -> io::Result<()> {
        let bytes = index.to_le_bytes();
        self.socket
            .async_io(Interest::WRITABLE, |socket| {
                send_with_fds(socket.as_raw_fd(), &bytes, &[fd])
            })
            .await
    }

    /// The next connection's table index and descriptor (`None` when the
    /// kernel could not install it: this process is at its open-files
    /// limit); `None` once the other end closed.
    pub async fn recv(&self) -> io::Result<Option<(u32, Option<OwnedFd>)>> {
        let mut bytes = [0u8; 4];
        let received = self
            .socket
            .async_io(Interest::READABLE, |socket| {
                recv_with_fds(socket.as_raw_fd(), &mut bytes, 1)
            })
            .await;
        let (read, mut fds) = match received {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::QuotaExceeded => {
                return Ok(Some((u32::from_le_bytes(bytes), None)));
            }
            Err(error) => return Err(error),
        };
        if read == 0 && fds.is_empty() {
            return Ok(None);
        }
        match (read, fds.pop()) {
            (4, Some(fd)) if fds.is_empty() => Ok(Some((u32::from_le_bytes(bytes), Some(fd)))),
            _ => Err(io::Error::other(
                "a connection record without exactly one descriptor and a 4-byte index",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_connection_crosses_with_its_index() {
        let (a, b) = pair().unwrap();
        let (sender, receiver) = (
            ConnectionChannel::new(a).unwrap(),
            ConnectionChannel::new(b).unwrap(),
        );
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        sender.send(42, theirs.as_fd()).await.unwrap();
        drop(theirs);
        let (index, fd) = receiver.recv().await.unwrap().unwrap();
        assert_eq!(index, 42);
        let mut received = std::os::unix::net::UnixStream::from(fd.unwrap());
        received.write_all(b"hi").unwrap();
        let mut buffer = [0u8; 2];
        ours.read_exact(&mut buffer).unwrap();
        assert_eq!(&buffer, b"hi");
        drop(sender);
        assert!(receiver.recv().await.unwrap().is_none());
    }
}
