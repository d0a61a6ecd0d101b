//! Closing a client's connection from inside a handler.
//!
//! actix-web offers no way to drop a connection without answering, so we
//! remember each connection's socket when it is accepted and, for a reset,
//! set `SO_LINGER` to zero and shut the socket down: the client sees the
//! connection die with no response, as it would if the bank crashed.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;

/// The raw socket of the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFd(RawFd);

/// `HttpServer::on_connect` hook: stores the socket in the connection data.
pub fn remember_connection_fd(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<TcpStream>() {
        data.insert(ConnectionFd(stream.as_raw_fd()));
    }
}

impl ConnectionFd {
    /// Aborts the connection. Only call while its request is being served.
    #[allow(unsafe_code)]
    pub fn reset(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: the descriptor belongs to the connection whose request is
        // being handled, so it is open and not reused; setsockopt reads a
        // properly sized `linger`, and shutdown leaves closing the descriptor
        // to actix-web, which owns it.
        unsafe {
            libc::setsockopt(
                self.0,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
            );
            libc::shutdown(self.0, libc::SHUT_RDWR);
        }
    }
}
