//! Pub/sub fan-out: one RESP3 connection per replica carries every subscription of the
//! process, and each channel has one in-process broadcast that any number of local
//! subscribers share (10,000 watchers of a task cost one Redis subscription, one JSON
//! decode per change and one encoding per view, see [`Published`]).
//!
//! The connection resubscribes by itself after a reconnect. A watchdog pings it every
//! [`WATCHDOG_EVERY`]: a ping on a broken connection makes it reconnect (a subscriber-only
//! connection sends no other command that would), and once a ping succeeds after a
//! failure or a disconnection, every subscriber is told ([`Update::Lagged`]) that it may
//! have missed changes, so it re-reads. The telling waits for that ping: by then the
//! subscriptions are live again, so what is published after the re-read is delivered.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use redis::{PushInfo, PushKind};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::connection::{Commands, Connector};
use super::unavailable;
use crate::background::Background;
use crate::store::{Published, StoreResult, Update, Updates, Wakeups};

/// Messages a local subscriber may fall behind by before it is told to re-read.
const BUFFER: usize = 1024;
/// How often the watchdog pings the subscription connection.
const WATCHDOG_EVERY: Duration = Duration::from_millis(500);

/// What a channel carries.
pub enum Channel {
    /// Changes of one task; the stream ends after the terminal version.
    Task(String),
    /// Changes of the tasks of one owner (a replica's control channel): one channel per
    /// shard, merged.
    Owner(Vec<String>),
}

#[derive(Clone, Debug)]
enum Message {
    Changed(Arc<Published>),
    /// A task was queued.
    Queued,
    /// The connection broke: messages may have been lost.
    Missed,
}

type Table = Mutex<HashMap<String, broadcast::Sender<Message>>>;

pub struct Fanout {
    connection: Commands,
    /// Whether task and owner channels are shard channels (`SSUBSCRIBE`, on a cluster).
    sharded: bool,
    channels: Arc<Table>,
    /// Serializes SUBSCRIBE/UNSUBSCRIBE so a channel's first subscriber has its
    /// subscription confirmed before any other local subscriber of it returns.
    changes: tokio::sync::Mutex<()>,
    queue_channel: String,
    /// Set when Redis reports the connection lost; the watchdog tells the subscribers once
    /// the connection is back.
    disconnected: Arc<AtomicBool>,
    /// Where the watchdog and the unsubscriptions run.
    background: Background,
}

fn lock(table: &Table) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Message>>> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands one push from Redis to the local subscribers of its channel. Runs on the
/// connection's task, so it only decodes and sends.
fn route(table: &Table, queue_channel: &str, disconnected: &AtomicBool, push: PushInfo) {
    match push.kind {
        // Messages of plain and of shard channels (on a cluster).
        PushKind::Message | PushKind::SMessage => {
            let [channel, payload] = push.data.as_slice() else {
                return;
            };
            let (Ok(channel), Ok(payload)) = (
                redis::from_redis_value_ref::<String>(channel),
                redis::from_redis_value_ref::<String>(payload),
            ) else {
                return;
            };
            let table = lock(table);
            let Some(sender) = table.get(&channel) else {
                return;
            };
            let message = if channel == queue_channel {
                Message::Queued
            } else {
                match super::decode_published(&payload) {
                    Ok(task) => Message::Changed(Published::new(task)),
                    Err(err) => {
                        tracing::warn!(%channel, %err, "undecodable task change");
                        Message::Missed
                    }
                }
            };
            let _ = sender.send(message);
        }
        PushKind::Disconnection => disconnected.store(true, Ordering::SeqCst),
        _ => {}
    }
}

impl Fanout {
    /// `sharded`: task and owner channels are shard channels (a Redis Cluster).
    pub fn connect(
        connector: &Connector,
        sharded: bool,
        queue_channel: String,
        background: &Background,
    ) -> StoreResult<Arc<Fanout>> {
        let channels: Arc<Table> = Arc::default();
        let router = Arc::clone(&channels);
        let queue = queue_channel.clone();
        let disconnected = Arc::new(AtomicBool::new(false));
        let lost = Arc::clone(&disconnected);
        let connection = connector
            .subscriber(move |push: PushInfo| route(&router, &queue, &lost, push))
            .map_err(unavailable)?;
        let fanout = Arc::new(Fanout {
            connection,
            sharded,
            channels,
            changes: tokio::sync::Mutex::new(()),
            queue_channel,
            disconnected,
            background: background.clone(),
        });
        background.spawn(watchdog(Arc::downgrade(&fanout)));
        Ok(fanout)
    }

    /// Whether `channel` is a shard channel: every channel but the queue's, on a cluster.
    fn is_sharded(&self, channel: &str) -> bool {
        self.sharded && channel != self.queue_channel
    }

    /// Tells every local subscriber that changes may have been missed.
    fn tell_missed(&self) {
        for sender in lock(&self.channels).values() {
            let _ = sender.send(Message::Missed);
        }
    }

    async fn subscribe(self: &Arc<Self>, channel: &str) -> StoreResult<Subscription> {
        let _serialized = self.changes.lock().await;
        let existing = lock(&self.channels)
            .get(channel)
            .map(broadcast::Sender::subscribe);
        let receiver = match existing {
            Some(receiver) => receiver,
            None => {
                let (sender, receiver) = broadcast::channel(BUFFER);
                lock(&self.channels).insert(channel.to_owned(), sender);
                let sharded = self.is_sharded(channel);
                if let Err(err) = self.connection.clone().subscribe(channel, sharded).await {
                    lock(&self.channels).remove(channel);
                    return Err(unavailable(err));
                }
                receiver
            }
        };
        Ok(Subscription {
            fanout: Arc::clone(self),
            channel: channel.to_owned(),
            messages: Some(BroadcastStream::new(receiver)),
        })
    }

    /// Unsubscribes from `channel` once no local subscriber is left.
    fn release(self: &Arc<Self>, channel: String) {
        let fanout = Arc::clone(self);
        self.background.spawn(async move {
            let _serialized = fanout.changes.lock().await;
            let unused = {
                let mut table = lock(&fanout.channels);
                let unused = table
                    .get(&channel)
                    .is_some_and(|sender| sender.receiver_count() == 0);
                if unused {
                    table.remove(&channel);
                }
                unused
            };
            if unused {
                let sharded = fanout.is_sharded(&channel);
                let _ = fanout
                    .connection
                    .clone()
                    .unsubscribe(&channel, sharded)
                    .await;
            }
        });
    }

    pub async fn updates(self: &Arc<Self>, channel: Channel) -> StoreResult<Updates> {
        match channel {
            Channel::Task(name) => Ok(Box::pin(UntilTerminal {
                updates: self.changes_of(&name).await?,
                ended: false,
            })),
            Channel::Owner(names) => {
                let mut merged = Vec::with_capacity(names.len());
                for name in &names {
                    merged.push(self.changes_of(name).await?);
                }
                Ok(Box::pin(futures_util::stream::select_all(merged)))
            }
        }
    }

    /// The changes published on one channel.
    async fn changes_of(self: &Arc<Self>, channel: &str) -> StoreResult<Updates> {
        let subscription = self.subscribe(channel).await?;
        Ok(Box::pin(subscription.filter_map(|message| {
            std::future::ready(match message {
                Message::Changed(task) => Some(Update::Changed(task)),
                Message::Missed => Some(Update::Lagged),
                Message::Queued => None,
            })
        })))
    }

    pub async fn wakeups(self: &Arc<Self>) -> StoreResult<Wakeups> {
        let channel = self.queue_channel.clone();
        // A missed message may have been a queued task: wake up for it too.
        Ok(Box::pin(self.subscribe(&channel).await?.map(drop)))
    }
}

/// Pings the subscription connection until the fan-out is dropped; see the module docs.
async fn watchdog(fanout: std::sync::Weak<Fanout>) {
    let mut broken = false;
    loop {
        tokio::time::sleep(WATCHDOG_EVERY).await;
        let Some(fanout) = fanout.upgrade() else {
            return;
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING")
            .query_async(&mut fanout.connection.clone())
            .await;
        if pong.is_err() {
            broken = true;
        } else if fanout.disconnected.swap(false, Ordering::SeqCst) || broken {
            broken = false;
            tracing::info!("pub/sub connection to Redis is back; subscribers re-read");
            fanout.tell_missed();
        }
    }
}

/// One local subscriber of a channel; dropping the last one unsubscribes the channel.
struct Subscription {
    fanout: Arc<Fanout>,
    channel: String,
    /// `None` only while it is dropped.
    messages: Option<BroadcastStream<Message>>,
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let Some(messages) = &mut self.messages else {
            return Poll::Ready(None);
        };
        messages
            .poll_next_unpin(cx)
            .map(|item| item.map(|message| message.unwrap_or(Message::Missed)))
    }
}

impl Drop for Subscription {
    /// Leaves the channel first, then looks whether anyone is left: when the 10,000 watchers
    /// of a task end together, only the last ones (any that find no receiver left) spawn
    /// the unsubscription, which looks again before it unsubscribes.
    fn drop(&mut self) {
        drop(self.messages.take());
        let unused = lock(&self.fanout.channels)
            .get(&self.channel)
            .is_some_and(|sender| sender.receiver_count() == 0);
        if unused {
            self.fanout.release(std::mem::take(&mut self.channel));
        }
    }
}

/// Ends a task's updates right after its terminal version.
struct UntilTerminal {
    updates: Updates,
    ended: bool,
}

impl Stream for UntilTerminal {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let polled = self.updates.poll_next_unpin(cx);
        if let Poll::Ready(Some(Update::Changed(task))) = &polled {
            self.ended = task.state.is_terminal();
        }
        polled
    }
}
