//! How a watch stream is paced on the wire: heartbeat events while nothing changes, so that
//! proxies' stream-idle timers (HAProxy's `timeout client/server`, Envoy's
//! `stream_idle_timeout`) do not cut a quiet watch — HTTP/2 PINGs are not forwarded by
//! proxies, so they cannot do it — and an end with DEADLINE_EXCEEDED at the client's
//! deadline (`grpc-timeout`), which tonic enforces only until the response starts.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reins_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

struct Paced {
    events: Events,
    heartbeat: Option<Duration>,
    deadline: Option<Instant>,
    /// The last event sent, repeated as a heartbeat.
    last: Option<pb::TaskEvent>,
    ended: bool,
}

/// `events` with a heartbeat after every `heartbeat` of silence (none if `None`), ending
/// with DEADLINE_EXCEEDED at `deadline`. Ending early drops `events`, which then behaves as
/// a client that hung up (`cancel_on_disconnect`).
pub(crate) fn paced(
    events: Events,
    heartbeat: Option<Duration>,
    deadline: Option<Duration>,
) -> Events {
    let state = Paced {
        events,
        heartbeat,
        deadline: deadline.map(|within| Instant::now() + within),
        last: None,
        ended: false,
    };
    Box::pin(futures_util::stream::unfold(state, Paced::next))
}

impl Paced {
    async fn next(mut self) -> Option<(Result<pb::TaskEvent, Status>, Paced)> {
        if self.ended {
            return None;
        }
        let quiet = async {
            match self.heartbeat {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The client's deadline first: a stream past it gets nothing more.
            biased;
            () = deadline => {
                self.ended = true;
                // Drop the watch now: a tied watcher's task is soft-cancelled at its deadline.
                self.events = Box::pin(futures_util::stream::empty());
                Some((Err(Status::deadline_exceeded("the call's deadline passed")), self))
            }
            event = self.events.next() => {
                let event = event?;
                if let Ok(sent) = &event {
                    self.last = Some(sent.clone());
                }
                Some((event, self))
            }
            () = quiet, if self.last.is_some() => {
                let beat = pb::TaskEvent {
                    heartbeat: true,
                    time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                    ..self.last.clone().expect("a heartbeat follows an event")
                };
                Some((Ok(beat), self))
            }
        }
    }
}

/// The deadline a client set on its call (`grpc-timeout`: up to 8 digits and a unit, H M S
/// m u n); `None` if it set none or the header is not one.
pub(crate) fn client_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        metadata
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let read = |value| client_deadline(&with_timeout(value));
        assert_eq!(read("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(read("3M"), Some(Duration::from_secs(180)));
        assert_eq!(read("1S"), Some(Duration::from_secs(1)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("7u"), Some(Duration::from_micros(7)));
        assert_eq!(read("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(client_deadline(&MetadataMap::new()), None);
    }

    fn event(version: u64) -> pb::TaskEvent {
        pb::TaskEvent {
            task: Some(pb::Task {
                version,
                ..Default::default()
            }),
            time: None,
            heartbeat: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_heartbeats_repeating_the_last_event() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let events: Events = Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ));
        let mut paced = paced(events, Some(Duration::from_secs(15)), None);
        sender.send(Ok(event(3))).unwrap();
        assert_eq!(paced.next().await.unwrap().unwrap(), event(3));
        let beat = paced.next().await.unwrap().unwrap();
        assert!(beat.heartbeat);
        assert_eq!(beat.task.unwrap().version, 3);
        sender.send(Ok(event(4))).unwrap();
        assert_eq!(paced.next().await.unwrap().unwrap(), event(4));
        drop(sender);
        assert!(paced.next().await.is_none(), "ends when the watch ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_with_deadline_exceeded_at_the_clients_deadline() {
        let events: Events = Box::pin(futures_util::stream::pending());
        let mut paced = paced(events, None, Some(Duration::from_secs(1)));
        let status = paced.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(paced.next().await.is_none());
    }
}
