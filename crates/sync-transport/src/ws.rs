//! WebSocket subscriptions (tokio-tungstenite over the upgraded hyper connection).
//!
//! Opening: `GET /v1/subscribe` with `Upgrade: websocket`, `Authorization: Bearer
//! <token>` and `x-weft-subscribe: <base64url of a Subscribe frame>`. Everything is
//! checked before the upgrade, so a bad token, a scope beyond the grant or a full node
//! gets a plain 401/403/503 with an error frame, and nothing is read.
//!
//! After the upgrade the node sends one binary WebSocket message per [`Notice`] frame:
//! replayed events, `EndOfStored`, live events, and at the end `Gap` and/or `Closing`
//! with the reason. The client sends nothing but control frames. Heartbeats go both ways
//! as WebSocket pings; each side closes when it has received nothing (a pong, a ping or
//! a message) for its heartbeat timeout.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode,
};

use crate::frame;
use crate::node::echo::{KNOWN_HEADER, KNOWN_HEADER_BYTES_MAX, SESSION_HEADER, SessionId};
use crate::node::{Feed, Handler, Node, ms};
use crate::proto::{CloseReason, ErrorCode, ErrorReply, Notice, SubscribeRequest};
use crate::server::{ResBody, full};
use sync_types::KnownRanges;

/// The header that carries the subscribe frame, base64url without padding.
pub const SUBSCRIBE_HEADER: &str = "x-weft-subscribe";
/// Longest `x-weft-subscribe` header value accepted, in bytes.
pub const SUBSCRIBE_HEADER_BYTES_MAX: usize = 32 * 1024;

/// The WebSocket settings of a subscription: a small eager read buffer (idle
/// subscriptions are cheap), writes gathered up to 8 KiB between flushes, and a bounded
/// write buffer.
pub(crate) fn ws_config(message_bytes_max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(message_bytes_max.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(message_bytes_max))
        .max_frame_size(Some(message_bytes_max))
}

fn bad(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::BadRequest, message)
}

/// Checks a subscription request and, when it passes, answers 101 and serves it on the
/// upgraded connection.
pub(crate) fn upgrade<H: Handler>(
    node: &Node<H>,
    mut req: HttpRequest<Incoming>,
) -> Result<Response<ResBody>, ErrorReply> {
    let headers = req.headers();
    let is_upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let (true, Some(accept)) = (is_upgrade, key) else {
        return Err(bad("subscriptions need a WebSocket upgrade"));
    };
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::server::bearer_of);
    let ctx = node.authenticate(bearer)?;
    let encoded = headers
        .get(SUBSCRIBE_HEADER)
        .ok_or_else(|| bad(format!("missing {SUBSCRIBE_HEADER} header")))?;
    if encoded.len() > SUBSCRIBE_HEADER_BYTES_MAX {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!("{SUBSCRIBE_HEADER} exceeds {SUBSCRIBE_HEADER_BYTES_MAX} bytes"),
        ));
    }
    let bytes = URL_SAFE_NO_PAD.decode(encoded.as_bytes()).map_err(|_| {
        ErrorReply::new(
            ErrorCode::BadFrame,
            format!("{SUBSCRIBE_HEADER} is not base64url"),
        )
    })?;
    let request: SubscribeRequest = frame::decode(&bytes, node.config.frame_bytes_max)
        .map_err(|e| crate::node::frame_reply(&e))?;
    let (session, known) = left_out_headers(headers, node.config.frame_bytes_max)?;
    let feed = node.subscribe_leaving_out(&ctx, request, session, known)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = node.config.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws_config(64 * 1024)),
        )
        .await;
        serve_feed(ws, feed, Heartbeat::of(&config)).await;
    });
    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept)
            .map_err(|_| ErrorReply::new(ErrorCode::Internal, "bad accept key"))?,
    );
    Ok(res)
}

/// The session and known ranges a subscription upgrade names (see
/// [`echo`](crate::node::echo)); both optional, malformed ones refused.
fn left_out_headers(
    headers: &hyper::HeaderMap,
    frame_bytes_max: usize,
) -> Result<(Option<SessionId>, Option<KnownRanges>), ErrorReply> {
    let session = match headers.get(SESSION_HEADER) {
        None => None,
        Some(v) => Some(
            SessionId::parse(v.as_bytes())
                .ok_or_else(|| bad(format!("{SESSION_HEADER} is not 32 hex digits")))?,
        ),
    };
    let known = match headers.get(KNOWN_HEADER) {
        None => None,
        Some(v) if v.len() > KNOWN_HEADER_BYTES_MAX => {
            return Err(ErrorReply::new(
                ErrorCode::TooLarge,
                format!("{KNOWN_HEADER} exceeds {KNOWN_HEADER_BYTES_MAX} bytes"),
            ));
        }
        Some(v) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(v.as_bytes())
                .map_err(|_| bad(format!("{KNOWN_HEADER} is not base64url")))?;
            Some(
                sync_types::codec::decode(&bytes, frame_bytes_max)
                    .map_err(|e| bad(format!("{KNOWN_HEADER}: {e}")))?,
            )
        }
    };
    Ok((session, known))
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Heartbeat {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Longest time one send may take before the peer counts as gone.
    pub(crate) send: Duration,
}

impl Heartbeat {
    fn of(config: &crate::node::ServerConfig) -> Self {
        Self {
            interval: ms(config.heartbeat_interval_ms.max(1)),
            timeout: ms(config.heartbeat_timeout_ms.max(1)),
            send: ms(config.write_stall_ms_max.max(1)),
        }
    }
}

async fn send_notice<S>(ws: &mut S, notice: &Notice, limit: Duration) -> bool
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    let msg = WsMessage::Binary(frame::encode(notice).into());
    matches!(tokio::time::timeout(limit, ws.send(msg)).await, Ok(Ok(())))
}

/// Most notices written before one flush.
const SEND_BATCH_LEN_MAX: usize = 64;

async fn send_notices<S>(ws: &mut S, notices: &[Notice], limit: Duration) -> bool
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    let all = async {
        for n in notices {
            ws.feed(WsMessage::Binary(frame::encode(n).into())).await?;
        }
        ws.flush().await
    };
    matches!(tokio::time::timeout(limit, all).await, Ok(Ok(())))
}

/// Pumps a subscription's queue into the socket, with heartbeats.
async fn serve_feed<S>(ws: WebSocketStream<S>, mut feed: Feed, hb: Heartbeat)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval_at(Instant::now() + hb.interval, hb.interval);
    let mut last_heard = Instant::now();
    let closing = loop {
        let deadline = tokio::time::sleep_until(last_heard + hb.timeout);
        tokio::select! {
            notice = feed.next() => match notice {
                Some(Notice::Closing(reason)) => break Some(reason),
                Some(n) => {
                    // Send what is already queued in one flush: one write per burst
                    // instead of one per event.
                    let mut batch = vec![n];
                    while batch.len() < SEND_BATCH_LEN_MAX {
                        match feed.try_next() {
                            Some(n) => batch.push(n),
                            None => break,
                        }
                    }
                    if !send_notices(&mut sink, &batch, hb.send).await {
                        break None;
                    }
                }
                None => break Some(CloseReason::error("subscription ended")),
            },
            incoming = stream.next() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break None,
                // Pings are answered by tungstenite on the next write; any frame counts
                // as a heartbeat.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                let sent = tokio::time::timeout(hb.send, sink.send(WsMessage::Ping(Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break None;
                }
            }
            _ = deadline => break Some(CloseReason::HeartbeatTimeout),
        }
    };
    // Stop the loop before the goodbye, so the slot is free as soon as possible.
    drop(feed);
    if let Some(reason) = closing
        && send_notice(&mut sink, &Notice::Closing(reason.clone()), hb.send).await
    {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: close_text(&reason).into(),
        };
        let _ = tokio::time::timeout(hb.send, sink.send(WsMessage::Close(Some(frame)))).await;
    }
}

fn close_text(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Lagged { .. } => "lagged",
        CloseReason::HeartbeatTimeout => "heartbeat timeout",
        CloseReason::ShuttingDown => "shutting down",
        CloseReason::Expired => "token expired",
        CloseReason::Gap => "progress gap",
        CloseReason::ConnectionLost { .. } => "connection lost",
        CloseReason::Unavailable { .. } => "node unavailable",
        _ => "error",
    }
}

/// The client side of a WebSocket subscription: reads notices into `tx` (bounded; a
/// consumer that does not read stops the reading, and the node then sees the lag),
/// pings, and ends with a `Closing` item.
pub(crate) async fn run_client<S>(
    ws: WebSocketStream<S>,
    tx: mpsc::Sender<Notice>,
    hb: Heartbeat,
    frame_bytes_max: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval_at(Instant::now() + hb.interval, hb.interval);
    let mut last_heard = Instant::now();
    let reason = loop {
        let deadline = tokio::time::sleep_until(last_heard + hb.timeout);
        tokio::select! {
            incoming = stream.next() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(WsMessage::Binary(bytes))) => match frame::decode::<Notice>(&bytes, frame_bytes_max) {
                        Ok(Notice::Closing(r)) => break r,
                        Ok(n) => {
                            if tx.send(n).await.is_err() {
                                // The consumer dropped its subscription.
                                let _ = sink.send(WsMessage::Close(None)).await;
                                return;
                            }
                        }
                        Err(e) => break CloseReason::error(format!("bad notice from node: {e}")),
                    },
                    // Without a `Closing` notice first: the node died or its
                    // connection broke, which costs a resubscription, not a repair.
                    Some(Ok(WsMessage::Close(_))) | None => break CloseReason::connection_lost("node closed the subscription without a Closing notice"),
                    Some(Err(e)) => break CloseReason::connection_lost(format!("subscription connection failed: {e}")),
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                let sent = tokio::time::timeout(hb.send, sink.send(WsMessage::Ping(Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break CloseReason::connection_lost("could not send a heartbeat");
                }
            }
            _ = deadline => break CloseReason::HeartbeatTimeout,
            _ = tx.closed() => {
                let _ = tokio::time::timeout(hb.send, sink.send(WsMessage::Close(None))).await;
                return;
            }
        }
    };
    let _ = tx.send(Notice::Closing(reason)).await;
}
