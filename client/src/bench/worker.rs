//! A worker the bench runs itself over `WorkerService.Connect`, for tasks of a worker kind:
//! it takes every assignment (and tells when each arrived), reports progress on each
//! running task about every `progress_every` (spread evenly, as many independent workers
//! would), completes a task when told to, and notes the moment a cancel reaches it. A soft cancel (`cancel`) is acknowledged at once with
//! `cancel_ack`; a hard one arrives as `abort`. Either way the moment the command arrived
//! is when the task's code would have stopped, with no heartbeat resolution in the way.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reins_client::proto::worker_command::Command;
use reins_client::proto::worker_message::Message;
use reins_client::proto::worker_service_client::WorkerServiceClient;
use reins_client::proto::{
    CancelAck, TaskComplete, TaskProgress, WorkerCommand, WorkerHello, WorkerMessage,
};
use reins_client::{Credentials, connect_channel};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use super::cluster::Server;
use super::{BenchError, BenchResult, tasks};

/// How often the progress loop wakes to report on its share of the running tasks.
const PROGRESS_TICK: Duration = Duration::from_millis(10);
/// How long the `welcome` may take.
const WELCOME_PATIENCE: Duration = Duration::from_secs(10);

/// What arrived for a task the bench is waiting on.
#[derive(Clone, Copy, Debug)]
pub struct Stopped {
    /// When the command arrived, ns since the Unix epoch.
    pub at: i128,
    /// `abort` (a hard cancel) rather than `cancel`.
    pub aborted: bool,
}

#[derive(Default)]
struct State {
    running: BTreeSet<String>,
    /// Tasks taken out of `running` by [`BenchWorker::pick`], told when their cancel comes.
    waiting: HashMap<String, oneshot::Sender<Stopped>>,
    /// Why the stream ended, once it has.
    closed: Option<String>,
}

/// One connected worker; dropping it ends its stream.
pub struct BenchWorker {
    /// The replica it is connected to: the owner of every task it runs.
    pub replica: String,
    state: Arc<Mutex<State>>,
    outbox: mpsc::UnboundedSender<WorkerMessage>,
    /// Every assignment's task id and when it arrived (ns since the Unix epoch).
    assigned: AsyncMutex<mpsc::UnboundedReceiver<(String, i128)>>,
    reader: JoinHandle<()>,
    progress: JoinHandle<()>,
}

impl BenchWorker {
    /// Connects to `server` (which needs its replica id: it owns the worker's tasks), says
    /// `hello` for `kind` with `slots` and waits for the `welcome`.
    pub async fn connect(
        server: &Server,
        kind: &str,
        slots: u32,
        progress_every: Duration,
    ) -> BenchResult<BenchWorker> {
        let replica = server.spec.replica.clone().ok_or_else(|| {
            BenchError::Unexpected("a bench worker needs the replica id: ID=URL".into())
        })?;
        let channel = connect_channel(server.spec.url.clone(), &Credentials::default()).await?;
        let (outbox, inbox) = mpsc::unbounded_channel();
        let hello = WorkerHello {
            name: format!("reins-bench@{replica}"),
            kinds: vec![kind.to_owned()],
            max_concurrency: slots,
            ..WorkerHello::default()
        };
        let _ = outbox.send(message(Message::Hello(hello)));
        let mut commands = WorkerServiceClient::new(channel)
            .connect(UnboundedReceiverStream::new(inbox))
            .await?
            .into_inner();
        match tokio::time::timeout(WELCOME_PATIENCE, commands.message()).await {
            Ok(Ok(Some(WorkerCommand {
                command: Some(Command::Welcome(_)),
            }))) => {}
            other => {
                return Err(BenchError::Unexpected(format!(
                    "worker on {replica}: no welcome: {other:?}"
                )));
            }
        }
        let state = Arc::new(Mutex::new(State::default()));
        let (tell_assigned, assigned) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(
            commands,
            outbox.clone(),
            Arc::clone(&state),
            tell_assigned,
        ));
        let progress = tokio::spawn(report(outbox.clone(), Arc::clone(&state), progress_every));
        Ok(BenchWorker {
            replica,
            state,
            outbox,
            assigned: AsyncMutex::new(assigned),
            reader,
            progress,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the worker's state is never poisoned")
    }

    /// Tasks assigned and not cancelled.
    pub fn running(&self) -> usize {
        self.state().running.len()
    }

    /// Why the stream ended, if it has.
    pub fn closed(&self) -> Option<String> {
        self.state().closed.clone()
    }

    /// The next assignment not yet taken here: its task id and when it arrived; `None`
    /// if none comes `within` (or the stream ended).
    pub async fn next_assigned(&self, within: Duration) -> Option<(String, i128)> {
        let mut assigned = self.assigned.lock().await;
        tokio::time::timeout(within, assigned.recv()).await.ok()?
    }

    /// Completes a running task.
    pub fn complete(&self, task_id: &str) {
        self.state().running.remove(task_id);
        let complete = TaskComplete {
            task_id: task_id.to_owned(),
            result: None,
        };
        let _ = self.outbox.send(message(Message::Complete(complete)));
    }

    /// Takes one running task out of the progress rotation and returns its id with what
    /// will tell when its cancel arrives.
    pub fn pick(&self) -> Option<(String, oneshot::Receiver<Stopped>)> {
        let mut state = self.state();
        let id = state.running.pop_first()?;
        let (tell, told) = oneshot::channel();
        state.waiting.insert(id.clone(), tell);
        Some((id, told))
    }
}

impl Drop for BenchWorker {
    fn drop(&mut self) {
        self.reader.abort();
        self.progress.abort();
    }
}

fn message(message: Message) -> WorkerMessage {
    WorkerMessage {
        message: Some(message),
    }
}

/// Reads the server's commands until the stream ends.
async fn read(
    mut commands: Streaming<WorkerCommand>,
    outbox: mpsc::UnboundedSender<WorkerMessage>,
    state: Arc<Mutex<State>>,
    assigned: mpsc::UnboundedSender<(String, i128)>,
) {
    let lock = || state.lock().expect("the worker's state is never poisoned");
    let ended = loop {
        let command = match commands.message().await {
            Ok(Some(WorkerCommand {
                command: Some(command),
            })) => command,
            Ok(Some(WorkerCommand { command: None })) => continue,
            Ok(None) => break "the server ended the stream".to_owned(),
            Err(status) => break reins_client::describe_status(&status),
        };
        let at = tasks::now_unix_nanos();
        let (task_id, aborted) = match command {
            Command::Assign(assignment) => {
                if let Some(task) = assignment.task {
                    lock().running.insert(task.id.clone());
                    let _ = assigned.send((task.id, at));
                }
                continue;
            }
            Command::Cancel(cancel) => {
                let ack = CancelAck {
                    task_id: cancel.task_id.clone(),
                    result: None,
                };
                let _ = outbox.send(message(Message::CancelAck(ack)));
                (cancel.task_id, false)
            }
            Command::Abort(abort) => (abort.task_id, true),
            _ => continue,
        };
        let mut state = lock();
        state.running.remove(&task_id);
        if let Some(tell) = state.waiting.remove(&task_id) {
            let _ = tell.send(Stopped { at, aborted });
        }
    };
    let mut state = lock();
    state.closed = Some(ended);
    // Whoever waits learns it at once (a dropped sender) rather than at a timeout.
    state.waiting.clear();
}

/// Every [`PROGRESS_TICK`], reports on the next share of the running tasks, so each one
/// reports about every `every`.
async fn report(
    outbox: mpsc::UnboundedSender<WorkerMessage>,
    state: Arc<Mutex<State>>,
    every: Duration,
) {
    let ticks_per_round = (every.as_secs_f64() / PROGRESS_TICK.as_secs_f64()).max(1.0);
    let mut ticker = tokio::time::interval(PROGRESS_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut after = String::new();
    let mut reports = 0u64;
    loop {
        ticker.tick().await;
        let due: Vec<String> = {
            let state = state.lock().expect("the worker's state is never poisoned");
            let share = (state.running.len() as f64 / ticks_per_round).ceil() as usize;
            let mut due: Vec<String> = state
                .running
                .range::<String, _>((
                    std::ops::Bound::Excluded(&after),
                    std::ops::Bound::Unbounded,
                ))
                .take(share)
                .cloned()
                .collect();
            if due.len() < share {
                // Wrapped around: start again from the first task.
                due.extend(state.running.iter().take(share - due.len()).cloned());
            }
            due
        };
        if let Some(last) = due.last() {
            after.clone_from(last);
        }
        for task_id in due {
            reports += 1;
            let progress = TaskProgress {
                task_id,
                fraction: (reports % 100) as f64 / 100.0,
                message: "reins-bench: working".into(),
                ..TaskProgress::default()
            };
            if outbox.send(message(Message::Progress(progress))).is_err() {
                return;
            }
        }
    }
}
