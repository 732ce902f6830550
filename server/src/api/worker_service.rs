//! `reins.v1.WorkerService`: a worker process connects, says `hello`, and from then on its
//! stream carries its tasks. Each message is checked and handed to the job driving the
//! task (`executor::remote`); messages about tasks the worker does not run (any more) are
//! ignored with a warning, so a misbehaving worker cannot touch another task. A protocol
//! violation (no `hello` first, a second `hello`, an empty message) ends the stream with
//! FAILED_PRECONDITION.
//!
//! A worker moving here from a draining replica (after `reconnect`) lists the tasks it
//! still runs in `hello.running` (at most its `max_concurrency`); the engine adopts them
//! (`engine/adopt.rs`) before the `welcome`, which names them. When this replica drains,
//! the streams of workers that did not move end UNAVAILABLE.
//!
//! A worker is lost when its stream ends or its connection stops answering the server's
//! HTTP/2 keepalive pings (`--keepalive-interval`, `--keepalive-timeout`); its tasks are then retried, failed or
//! cancelled (see `task::state_machine`).
//!
//! Authentication sits in front of both services alike (`auth`): workers and clients
//! present the same credentials. A worker principal's `kinds` bound what its hello may
//! name (PERMISSION_DENIED `KIND_NOT_ALLOWED`).

use std::sync::Arc;
use std::time::Duration;

use reins_proto::json::value_to_json;
use reins_proto::v1 as pb;
use reins_proto::v1::worker_message::Message;
use reins_proto::v1::worker_service_server::WorkerService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{request, status};
use crate::auth::Caller;
use crate::engine::Engine;
use crate::engine::kinds::{MAX_KINDS_PER_HELLO, check_kind_name};
use crate::error::{Echo, Error};
use crate::executor::remote::{Commands, Worker, WorkerEvent};
use crate::limits::Limits;
use crate::task::{TaskId, Usage, budget};

pub(crate) struct WorkerApi {
    engine: Arc<Engine>,
    /// How long a worker's name and kinds may be. (What it reports about its tasks is
    /// bounded where every report is: the engine's `TaskPort`.)
    limits: Limits,
    /// Cancelled when the server shuts down: worker streams end.
    shutdown: CancellationToken,
    /// How often the server pings each connection (`--keepalive-interval`), told to
    /// workers in their `welcome`.
    heartbeat: Duration,
}

impl WorkerApi {
    pub fn new(
        engine: Arc<Engine>,
        limits: Limits,
        shutdown: CancellationToken,
        heartbeat: Duration,
    ) -> WorkerApi {
        WorkerApi {
            engine,
            limits,
            shutdown,
            heartbeat,
        }
    }
}

fn protocol_violation(what: &str) -> Status {
    Error::WorkerProtocol(what.to_owned()).into()
}

/// The kinds and capacity a `hello` announces, checked for shape (which kinds a worker may
/// serve is the engine's rule). A bounded list of bounded names: one hello cannot fill the
/// kind table or the store.
fn checked_hello(hello: &pb::WorkerHello) -> Result<(Vec<String>, usize), Error> {
    if hello.kinds.is_empty() {
        return Err(Error::invalid(
            "hello.kinds",
            "a worker serves at least one kind",
        ));
    }
    if hello.kinds.len() > MAX_KINDS_PER_HELLO {
        return Err(Error::invalid(
            "hello.kinds",
            format!(
                "a worker serves at most {MAX_KINDS_PER_HELLO} kinds, not {}",
                hello.kinds.len()
            ),
        ));
    }
    if let Some(problem) = hello
        .kinds
        .iter()
        .find_map(|kind| check_kind_name(kind).err())
    {
        return Err(Error::invalid("hello.kinds", problem));
    }
    Ok((hello.kinds.clone(), hello.max_concurrency.max(1) as usize))
}

/// The tasks a moving worker still runs (`hello.running`): at most its capacity, each a
/// task id with the attempt it was assigned.
fn running_tasks(
    hello: &pb::WorkerHello,
    max_concurrency: usize,
) -> Result<Vec<(TaskId, u32)>, Error> {
    if hello.running.len() > max_concurrency {
        return Err(Error::invalid(
            "hello.running",
            format!(
                "a worker runs at most max_concurrency ({max_concurrency}) tasks, not {}",
                hello.running.len()
            ),
        ));
    }
    hello
        .running
        .iter()
        .map(|task| {
            let id = TaskId::try_parse(&task.task_id)
                .map_err(|_| Error::invalid("hello.running.task_id", "not a task id (a UUID)"))?;
            Ok((id, task.attempt))
        })
        .collect()
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type ConnectStream = UnboundedReceiverStream<Result<pb::WorkerCommand, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let caller = Caller::of(&request)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await.map_err(status::inbound)? {
            Some(pb::WorkerMessage {
                message: Some(Message::Hello(hello)),
            }) => hello,
            _ => return Err(protocol_violation("the first message must be `hello`")),
        };
        let (kinds, max_concurrency) = checked_hello(&hello)?;
        for kind in &kinds {
            caller.check_kind(kind)?;
        }
        self.limits.hello(&hello.name, &kinds)?;
        let running = running_tasks(&hello, max_concurrency)?;
        let held = self.engine.hold_worker(&caller).await?;
        let (commands, commands_rx): (Commands, _) = mpsc::unbounded_channel();
        let worker = self
            .engine
            .admit_worker(
                &caller,
                hello.name.clone(),
                kinds,
                max_concurrency,
                commands.clone(),
            )
            .await?;
        let adopted = self.engine.adopt(&worker, running).await;
        let welcome = pb::WorkerWelcome {
            worker_id: worker.id.clone(),
            heartbeat_interval: prost_types::Duration::try_from(self.heartbeat).ok(),
            adopted: adopted.iter().map(ToString::to_string).collect(),
        };
        let _ = commands.send(Ok(pb::WorkerCommand {
            command: Some(pb::worker_command::Command::Welcome(welcome)),
        }));
        tracing::info!(worker = %worker.label(), kinds = ?hello.kinds, max_concurrency, "worker connected");
        self.engine.serve_worker(&worker);
        let serving = serve(
            Arc::clone(&self.engine),
            worker,
            inbound,
            commands,
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            serving.await;
            // The worker's place among its tenant's `max_workers` goes back with it.
            drop(held);
        });
        Ok(Response::new(UnboundedReceiverStream::new(commands_rx)))
    }
}

/// Reads one worker's messages until its stream ends, then forgets the worker.
async fn serve(
    engine: Arc<Engine>,
    worker: Arc<Worker>,
    mut inbound: Streaming<pb::WorkerMessage>,
    commands: Commands,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = shutdown.cancelled() => {
                // The end of the drain: a worker that did not move hears why its stream
                // ends (its tasks were handed back or cancelled), and connects again.
                let _ = commands.send(Err(Status::unavailable(
                    "the server is shutting down; connect again",
                )));
                break;
            }
        };
        match message {
            Ok(Some(message)) => {
                if let Err(violation) = route(&worker, message) {
                    tracing::warn!(worker = %worker.label(), %violation, "worker protocol violation; closing its stream");
                    let _ = commands.send(Err(violation));
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                // A message that does not decode is the worker's mistake: say so before
                // closing; a broken connection has nobody left to tell.
                let _ = commands.send(Err(status::inbound(err)));
                break;
            }
        }
    }
    tracing::info!(worker = %worker.label(), "worker disconnected");
    engine.disconnect_worker(&worker);
}

/// Hands one message to the job driving its task.
fn route(worker: &Worker, message: pb::WorkerMessage) -> Result<(), Status> {
    let Some(message) = message.message else {
        return Err(protocol_violation("an empty message"));
    };
    let json = |value: Option<prost_types::Value>| value.as_ref().map(value_to_json).transpose();
    let result = |value: Option<prost_types::Value>| {
        json(value)
            .map(Option::unwrap_or_default)
            .map_err(|_| protocol_violation("numbers in a result must be finite"))
    };
    let (task_id, event) = match message {
        Message::Hello(_) => return Err(protocol_violation("`hello` may be sent only once")),
        Message::Progress(progress) => {
            let Ok(partial_result) = json(progress.partial_result) else {
                return Err(protocol_violation(
                    "numbers in a partial result must be finite",
                ));
            };
            let usage: Usage = progress.usage.into_iter().collect();
            if let Some((dimension, why)) = budget::increment_problems(&usage).into_iter().next() {
                let dimension = dimension
                    .map(|d| format!(" {}", Echo(&d)))
                    .unwrap_or_default();
                return Err(protocol_violation(&format!("usage{dimension}: {why}")));
            }
            let event = WorkerEvent::Progress {
                fraction: progress.fraction,
                message: progress.message,
                partial_result,
                usage,
            };
            (progress.task_id, event)
        }
        Message::Ask(ask) => {
            let timeout = match request::duration("ask.timeout", ask.timeout) {
                Ok(timeout) => timeout,
                Err(err) => return Err(protocol_violation(&err.to_string())),
            };
            (
                ask.task_id,
                WorkerEvent::Ask {
                    question: ask.question,
                    timeout,
                },
            )
        }
        Message::Complete(complete) => (
            complete.task_id,
            WorkerEvent::Complete(result(complete.result)?),
        ),
        Message::Fail(fail) => (fail.task_id, WorkerEvent::Fail(fail.error)),
        Message::CancelAck(ack) => (ack.task_id, WorkerEvent::CancelAck(result(ack.result)?)),
    };
    let delivered = TaskId::try_parse(&task_id).is_ok_and(|id| worker.deliver(id, event));
    if !delivered {
        tracing::warn!(worker = %worker.label(), task = %task_id, "message about a task this worker does not run; ignored");
    }
    Ok(())
}
