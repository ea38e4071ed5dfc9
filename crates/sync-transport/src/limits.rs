//! The server's connection limits: how many connections in all
//! ([`ServerConfig::connections_max`]) and from one IP address
//! ([`ServerConfig::connections_per_address_max`]), how long a new connection may stay
//! silent ([`ServerConfig::first_byte_time_ms_max`]), and the reply a refused client
//! gets.
//!
//! Why these three together: a peer that opens connections and sends nothing holds a
//! slot each. The first-byte limit frees such a slot quickly, and the per-address cap
//! keeps one address from taking every slot, so idle connections delay other clients
//! by at most the first-byte limit. A refused client is told which limit it met (a 503
//! with an `Overloaded` error frame naming the limit), never just a closed socket: the
//! refusal reads the request head before answering, because a reply written into a
//! request that is still arriving is lost to a reset when the socket closes.
//!
//! [`ServerConfig::connections_max`]: crate::ServerConfig::connections_max
//! [`ServerConfig::connections_per_address_max`]: crate::ServerConfig::connections_per_address_max
//! [`ServerConfig::first_byte_time_ms_max`]: crate::ServerConfig::first_byte_time_ms_max

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::frame;
use crate::proto::{ErrorCode, ErrorReply};
use crate::server::FRAME_CONTENT_TYPE;

/// Refusals being written at once; connections refused beyond this are closed without
/// a reply, so a flood of connections cannot make the node spawn a task for each.
pub(crate) const REFUSALS_MAX: usize = 64;

/// Bytes of a refused request read (and dropped) before the 503 is written.
const REFUSAL_READ_BYTES_MAX: usize = 64 * 1024;

/// Longest time a refusal waits for the request head, and then for the client to
/// close, in milliseconds.
const REFUSAL_TIME_MS_MAX: u64 = 1_000;

/// Which connection limit refused a client.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Refusal {
    /// The node holds `connections_max` connections.
    Total {
        /// The limit.
        max: usize,
    },
    /// The client's address holds `connections_per_address_max` connections.
    PerAddress {
        /// The limit.
        max: usize,
    },
}

impl Refusal {
    /// The error reply that names the limit.
    pub(crate) fn reply(self) -> ErrorReply {
        let message = match self {
            Refusal::Total { max } => format!("the node is at its limit of {max} connections"),
            Refusal::PerAddress { max } => {
                format!("the node is at its limit of {max} connections from one address")
            }
        };
        ErrorReply::new(ErrorCode::Overloaded, message)
    }
}

/// Open connections, in all and per address. Cloning shares the counts.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionLimits {
    total: Arc<Semaphore>,
    total_max: usize,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_address_max: usize,
    refusals: Arc<Semaphore>,
}

/// One admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _total: OwnedSemaphorePermit,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.per_address);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The counts stay consistent even if a holder panicked: each update is one step.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnectionLimits {
    /// Limits of `total_max` connections, `per_address_max` from one address (both at
    /// least 1).
    pub(crate) fn new(total_max: usize, per_address_max: usize) -> Self {
        let total_max = total_max.max(1);
        Self {
            total: Arc::new(Semaphore::new(total_max)),
            total_max,
            per_address: Arc::default(),
            per_address_max: per_address_max.max(1),
            refusals: Arc::new(Semaphore::new(REFUSALS_MAX)),
        }
    }

    /// Admits a connection from `ip`, or says which limit refuses it: the node's when
    /// every slot is taken, else the address's when it holds its share.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut map = lock(&self.per_address);
        let held = map.get(&ip).copied().unwrap_or(0);
        if held >= self.per_address_max && self.total.available_permits() > 0 {
            return Err(Refusal::PerAddress {
                max: self.per_address_max,
            });
        }
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total {
                max: self.total_max,
            })?;
        map.insert(ip, held + 1);
        Ok(ConnectionSlot {
            _total: permit,
            per_address: self.per_address.clone(),
            ip,
        })
    }

    /// Waits until every admitted connection has closed.
    pub(crate) async fn all_closed(&self) {
        let all = u32::try_from(self.total_max).unwrap_or(u32::MAX);
        let _all = self.total.acquire_many(all).await;
    }

    /// Answers a refused connection with a 503 naming the limit, in the background; at
    /// most [`REFUSALS_MAX`] at once, beyond that the connection is just closed.
    pub(crate) fn refuse(&self, tcp: TcpStream, refusal: Refusal) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            write_refusal(tcp, "503 Service Unavailable", &refusal.reply()).await;
            drop(permit);
        });
    }
}

/// What the refusal log says of a connection closed by the first-byte limit (the peer
/// is sent nothing).
pub(crate) fn silent(first_byte_time_ms_max: u64) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Timeout,
        format!("closed a connection that sent nothing within {first_byte_time_ms_max} ms"),
    )
}

/// How a new connection began.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FirstByte {
    /// A byte of a request arrived.
    Sent,
    /// The peer closed (or the socket failed) before sending anything.
    Closed,
    /// Nothing came within the limit.
    Silent,
}

/// Waits for the first byte of a request on a new connection, at most `limit`.
pub(crate) async fn first_byte(tcp: &TcpStream, limit: Duration) -> FirstByte {
    let mut one = [0u8; 1];
    match tokio::time::timeout(limit, tcp.peek(&mut one)).await {
        Ok(Ok(n)) if n > 0 => FirstByte::Sent,
        Ok(_) => FirstByte::Closed,
        Err(_) => FirstByte::Silent,
    }
}

/// Answers a connection the node will not serve with one plain HTTP reply of `status`
/// (for example "503 Service Unavailable") carrying `reply`'s error frame, then closes.
pub(crate) async fn write_refusal(mut tcp: TcpStream, status: &str, reply: &ErrorReply) {
    let time = Duration::from_millis(REFUSAL_TIME_MS_MAX);
    let mut buf = vec![0u8; 4096];
    // Read the request head (or what comes of it in time): see the module docs.
    let mut seen: Vec<u8> = Vec::new();
    let _ = tokio::time::timeout(time, async {
        while seen.len() < REFUSAL_READ_BYTES_MAX {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let from = seen.len().saturating_sub(3);
                    seen.extend_from_slice(&buf[..n]);
                    if seen[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let body = frame::encode(reply);
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {FRAME_CONTENT_TYPE}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(time, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await?;
        // Drain what the client still sends (a request body) until it closes, so the
        // close is not a reset that could destroy the reply in flight.
        let mut drained = 0;
        while drained < REFUSAL_READ_BYTES_MAX {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_meets_its_own_cap_before_the_total() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.admit(ip(1)).unwrap();
        let _a2 = limits.admit(ip(1)).unwrap();
        assert_eq!(
            limits.admit(ip(1)).unwrap_err(),
            Refusal::PerAddress { max: 2 }
        );
        let _b1 = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).unwrap_err(), Refusal::Total { max: 3 });
        drop(a1);
        let _a3 = limits.admit(ip(1)).unwrap();
        // Full: the node's limit is named even to an address at its own.
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refusal::Total { max: 3 });
        assert!(lock(&limits.per_address).values().all(|&n| n > 0));
    }

    #[test]
    fn closed_connections_leave_no_entries() {
        let limits = ConnectionLimits::new(4, 4);
        let slots: Vec<_> = (1..=4).map(|i| limits.admit(ip(i)).unwrap()).collect();
        drop(slots);
        assert!(lock(&limits.per_address).is_empty());
        assert_eq!(limits.total.available_permits(), 4);
    }

    #[test]
    fn refusals_name_the_limit() {
        assert_eq!(
            Refusal::Total { max: 7 }.reply().message,
            "the node is at its limit of 7 connections"
        );
        assert_eq!(
            Refusal::PerAddress { max: 2 }.reply().message,
            "the node is at its limit of 2 connections from one address"
        );
        assert_eq!(
            Refusal::Total { max: 1 }.reply().code,
            ErrorCode::Overloaded
        );
    }
}
