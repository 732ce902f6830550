//! Connections below gRPC, for what a gRPC client never does: a TCP connection that never
//! sends a byte, and an HTTP/2 connection that makes no call.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::PATIENCE;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// A TCP connection to `address` (`host:port`) that sends nothing.
pub async fn silent(address: &str) -> TcpStream {
    TcpStream::connect(address).await.expect("connect")
}

/// Reads (and drops) whatever the server sends until it closes `stream`: a read returns
/// the end of the stream, or the connection is reset. Panics after `within`.
pub async fn wait_closed(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0; 1024];
    let reading = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .unwrap_or_else(|_| panic!("the server did not close the connection within {within:?}"));
}

/// An HTTP/2 connection whose preface and settings the server has acknowledged, and which
/// makes no call.
pub struct Http2Connection {
    stream: TcpStream,
    /// Bytes read and not yet taken as a frame: kept across a cancelled read, so that
    /// waiting for a frame can be raced against a timer without losing one.
    received: Vec<u8>,
}

/// One frame's header.
struct Frame {
    kind: u8,
    flags: u8,
    payload: Vec<u8>,
}

impl Http2Connection {
    /// Connects, sends the preface and empty settings, and waits for the server's
    /// acknowledgement of them: from then on the server has read the preface.
    pub async fn open(address: &str) -> Http2Connection {
        let mut connection = Http2Connection {
            stream: TcpStream::connect(address).await.expect("connect"),
            received: Vec::new(),
        };
        connection.send(PREFACE).await.expect("send the preface");
        connection
            .send_frame(SETTINGS, 0, &[])
            .await
            .expect("send settings");
        let acknowledged = async {
            loop {
                let frame = connection
                    .answer_next()
                    .await
                    .expect("the server's settings");
                if frame.kind == SETTINGS && frame.flags & ACK != 0 {
                    return;
                }
            }
        };
        tokio::time::timeout(PATIENCE, acknowledged)
            .await
            .expect("the server acknowledges the settings");
        connection
    }

    /// Whether the server still serves the connection: it answers a PING.
    pub async fn answers_ping(&mut self) -> bool {
        if self.send_frame(PING, 0, b"are you?").await.is_err() {
            return false;
        }
        let answered = async {
            loop {
                match self.answer_next().await {
                    Some(frame) if frame.kind == PING && frame.flags & ACK != 0 => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        };
        tokio::time::timeout(PATIENCE, answered)
            .await
            .expect("an answer to a PING or the end of the connection")
    }

    /// Sends a PING every `every` and answers the server's, until the server closes the
    /// connection; returns whether a GOAWAY came before the end. Panics after [`PATIENCE`].
    pub async fn ping_until_closed(&mut self, every: Duration) -> bool {
        let start = Instant::now();
        let mut goaway = false;
        let mut ticks = tokio::time::interval(every);
        loop {
            assert!(
                start.elapsed() < PATIENCE,
                "the server did not close the connection within {PATIENCE:?}"
            );
            tokio::select! {
                _ = ticks.tick() => {
                    if self.send_frame(PING, 0, b"still me").await.is_err() {
                        return goaway;
                    }
                }
                // Only the read is raced against the timer (it is cancel-safe); the answer
                // to a frame is sent in full.
                frame = self.next_frame() => match frame {
                    Some(frame) => {
                        goaway |= frame.kind == GOAWAY;
                        if self.answer(&frame).await.is_err() {
                            return goaway;
                        }
                    }
                    None => return goaway,
                },
            }
        }
    }

    /// Answers nothing (not even PINGs) until the server closes the connection. Panics
    /// after [`PATIENCE`].
    pub async fn ignore_until_closed(&mut self) {
        wait_closed(&mut self.stream, PATIENCE).await;
    }

    /// The next frame, after answering it if it is a PING or settings; `None` once the
    /// server has closed the connection.
    async fn answer_next(&mut self) -> Option<Frame> {
        let frame = self.next_frame().await?;
        self.answer(&frame).await.ok()?;
        Some(frame)
    }

    /// The next frame; `None` once the server has closed the connection. Cancel-safe:
    /// what a cancelled call had read stays in `received`.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            match self.stream.read_buf(&mut self.received).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// A whole frame from the front of `received`, if one is there.
    fn take_frame(&mut self) -> Option<Frame> {
        let header = self.received.get(..9)?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if self.received.len() < 9 + length {
            return None;
        }
        let frame = Frame {
            kind: self.received[3],
            flags: self.received[4],
            payload: self.received[9..9 + length].to_vec(),
        };
        self.received.drain(..9 + length);
        Some(frame)
    }

    /// Acknowledges a PING or the server's settings; other frames need no answer.
    async fn answer(&mut self, frame: &Frame) -> std::io::Result<()> {
        if frame.flags & ACK != 0 {
            return Ok(());
        }
        match frame.kind {
            PING => self.send_frame(PING, ACK, &frame.payload).await,
            SETTINGS => self.send_frame(SETTINGS, ACK, &[]).await,
            _ => Ok(()),
        }
    }

    async fn send_frame(&mut self, kind: u8, flags: u8, payload: &[u8]) -> std::io::Result<()> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        self.send(&frame).await
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }
}
