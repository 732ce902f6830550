//! How a watch stream is paced on the wire: heartbeat events while nothing changes, so that
//! proxies' stream-idle timers (HAProxy's `timeout client/server`, Envoy's
//! `stream_idle_timeout`) do not cut a quiet watch — HTTP/2 PINGs are not forwarded by
//! proxies, so they cannot do it — and an end with DEADLINE_EXCEEDED at the client's
//! deadline (`grpc-timeout`), which tonic enforces only until the response starts.
//!
//! Each stream keeps one quiet timer for its life and pushes it back after every event:
//! pushing a timer later is a store to an atomic in tokio, where a new timer per event
//! would be an insertion and a removal in the runtime's timer wheel for every delivery.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reins_proto::encoded::EncodedTaskEvent;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::metadata::MetadataMap;

pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<EncodedTaskEvent, Status>> + Send>>;

struct Paced {
    events: Events,
    /// The heartbeat period and the timer of the current quiet spell.
    heartbeat: Option<(Duration, Pin<Box<Sleep>>)>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last event sent, repeated as a heartbeat.
    last: Option<EncodedTaskEvent>,
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
    Box::pin(Paced {
        events,
        heartbeat: heartbeat.map(|every| (every, Box::pin(tokio::time::sleep(every)))),
        deadline: deadline.map(|within| Box::pin(tokio::time::sleep(within))),
        last: None,
        ended: false,
    })
}

impl Paced {
    /// Starts a new quiet spell: the next heartbeat is one period from now.
    fn quiet_from_now(&mut self) {
        if let Some((every, quiet)) = &mut self.heartbeat {
            quiet.as_mut().reset(Instant::now() + *every);
        }
    }
}

impl Stream for Paced {
    type Item = Result<EncodedTaskEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // The client's deadline first: a stream past it gets nothing more.
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.ended = true;
            // Drop the watch now: a tied watcher's task is soft-cancelled at its deadline.
            this.events = Box::pin(futures_util::stream::empty());
            return Poll::Ready(Some(Err(Status::deadline_exceeded(
                "the call's deadline passed",
            ))));
        }
        match this.events.poll_next_unpin(cx) {
            Poll::Ready(Some(event)) => {
                if let Ok(sent) = &event {
                    this.last = Some(sent.clone());
                    this.quiet_from_now();
                }
                return Poll::Ready(Some(event));
            }
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let (Some(last), Some((_, quiet))) = (&this.last, &mut this.heartbeat)
            && quiet.as_mut().poll(cx).is_ready()
        {
            let beat = last.heartbeat(prost_types::Timestamp::from(std::time::SystemTime::now()));
            this.quiet_from_now();
            return Poll::Ready(Some(Ok(beat)));
        }
        Poll::Pending
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
    use reins_proto::encoded::EncodedTask;
    use reins_proto::v1 as pb;

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

    fn event(version: u64) -> EncodedTaskEvent {
        let task = pb::Task {
            version,
            ..Default::default()
        };
        EncodedTaskEvent::new(EncodedTask::new(&task), prost_types::Timestamp::default())
    }

    fn version_of(event: EncodedTaskEvent) -> u64 {
        let bytes = prost::Message::encode_to_vec(&event);
        let decoded: pb::TaskEvent = prost::Message::decode(bytes.as_slice()).unwrap();
        decoded.task.unwrap().version
    }

    type Sender = tokio::sync::mpsc::UnboundedSender<Result<EncodedTaskEvent, Status>>;

    /// A paced stream of the events sent on the sender, with a heartbeat period of 15 s.
    fn with_heartbeats_every_15s() -> (Sender, Events) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let events: Events = Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ));
        (sender, paced(events, Some(Duration::from_secs(15)), None))
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_heartbeats_repeating_the_last_event() {
        let (sender, mut paced) = with_heartbeats_every_15s();
        sender.send(Ok(event(3))).unwrap();
        assert_eq!(paced.next().await.unwrap().unwrap(), event(3));
        let beat = paced.next().await.unwrap().unwrap();
        assert!(beat.heartbeat);
        assert_eq!(version_of(beat), 3);
        sender.send(Ok(event(4))).unwrap();
        assert_eq!(paced.next().await.unwrap().unwrap(), event(4));
        drop(sender);
        assert!(paced.next().await.is_none(), "ends when the watch ends");
    }

    #[tokio::test(start_paused = true)]
    async fn each_event_starts_a_new_quiet_spell() {
        let (sender, mut paced) = with_heartbeats_every_15s();
        sender.send(Ok(event(1))).unwrap();
        assert_eq!(paced.next().await.unwrap().unwrap(), event(1));
        tokio::time::advance(Duration::from_secs(10)).await;
        sender.send(Ok(event(2))).unwrap();
        assert_eq!(paced.next().await.unwrap().unwrap(), event(2));
        let second = Instant::now();
        let beat = paced.next().await.unwrap().unwrap();
        assert!(beat.heartbeat);
        assert_eq!(second.elapsed(), Duration::from_secs(15));
        let beat = paced.next().await.unwrap().unwrap();
        assert_eq!(
            second.elapsed(),
            Duration::from_secs(30),
            "a heartbeat starts one too"
        );
        assert_eq!(version_of(beat), 2);
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
