//! A fake worker for the `WorkerService.Connect` protocol, driven step by step by a test:
//! it says `hello`, reads the commands the server sends (each with a deadline) and sends
//! progress, questions, results and cancel acknowledgements when the test says so.

use std::time::Duration;

use reins_proto::json::json_to_value;
use reins_proto::v1::worker_command::Command;
use reins_proto::v1::worker_message::Message;
use reins_proto::v1::worker_service_client::WorkerServiceClient;
use reins_proto::v1::{
    AbortTask, CancelAck, CancelRequest, RunningTask, Task, TaskAnswer, TaskAsk, TaskAssignment,
    TaskComplete, TaskFail, TaskProgress, UsageAck, WorkerCommand, WorkerHello, WorkerMessage,
    WorkerReconnect, WorkerWelcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

use crate::PATIENCE;

/// A `hello` message.
pub fn hello(name: &str, kinds: &[&str], max_concurrency: u32) -> WorkerMessage {
    message(Message::Hello(WorkerHello {
        name: name.to_owned(),
        kinds: kinds.iter().map(|&kind| kind.to_owned()).collect(),
        max_concurrency,
        ..WorkerHello::default()
    }))
}

/// The `hello` of a worker moving from a draining replica with the tasks it still runs,
/// as `(task id, attempt)`.
pub fn moving_hello(
    name: &str,
    kinds: &[&str],
    max_concurrency: u32,
    running: &[(&str, u32)],
) -> WorkerMessage {
    let mut moving = hello(name, kinds, max_concurrency);
    if let Some(Message::Hello(hello)) = moving.message.as_mut() {
        hello.running = running
            .iter()
            .map(|&(task_id, attempt)| RunningTask {
                task_id: task_id.to_owned(),
                attempt,
            })
            .collect();
    }
    moving
}

pub fn message(message: Message) -> WorkerMessage {
    WorkerMessage {
        message: Some(message),
    }
}

/// What the server's side of the stream did next. Short-lived, so the command is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Next {
    Command(Command),
    /// The stream ended: `None` with OK, `Some` with an error status.
    Closed(Option<Status>),
    /// Nothing within the deadline.
    Quiet,
}

/// One worker connection: the messages it sends and the commands it receives.
pub struct FakeWorker {
    pub name: String,
    /// The server's `welcome`, once received ([`FakeWorker::connect`] waits for it).
    pub welcome: Option<WorkerWelcome>,
    outbox: mpsc::UnboundedSender<WorkerMessage>,
    commands: Streaming<WorkerCommand>,
    _channel: Channel,
}

impl FakeWorker {
    /// Connects to the server at `url`, says `hello` and waits for the `welcome`.
    pub async fn connect(url: &str, name: &str, kinds: &[&str], max_concurrency: u32) -> Self {
        FakeWorker::connect_as(url, None, name, kinds, max_concurrency).await
    }

    /// [`FakeWorker::connect`] with a bearer token.
    pub async fn connect_as(
        url: &str,
        token: Option<&str>,
        name: &str,
        kinds: &[&str],
        max_concurrency: u32,
    ) -> Self {
        let hello = hello(name, kinds, max_concurrency);
        FakeWorker::connect_with_as(url, token, name, hello).await
    }

    /// Connects with this `hello` (e.g. [`moving_hello`]) and waits for the `welcome`.
    pub async fn connect_with(url: &str, name: &str, hello: WorkerMessage) -> Self {
        FakeWorker::connect_with_as(url, None, name, hello).await
    }

    /// [`FakeWorker::connect_with`] with a bearer token.
    pub async fn connect_with_as(
        url: &str,
        token: Option<&str>,
        name: &str,
        hello: WorkerMessage,
    ) -> Self {
        let mut worker = FakeWorker::open_as(url, token, name, vec![hello])
            .await
            .unwrap_or_else(|status| panic!("worker {name} could not connect: {status:?}"));
        match worker.next().await {
            Command::Welcome(welcome) => worker.welcome = Some(welcome),
            other => panic!("worker {name}: the first command is not `welcome`: {other:?}"),
        }
        worker
    }

    /// Opens a stream that starts with `first` (which need not be a valid `hello`); the
    /// error status if the server refuses the call itself. Reads nothing yet.
    pub async fn open(
        url: &str,
        name: &str,
        first: Vec<WorkerMessage>,
    ) -> Result<FakeWorker, Status> {
        FakeWorker::open_as(url, None, name, first).await
    }

    /// [`FakeWorker::open`] with a bearer token.
    pub async fn open_as(
        url: &str,
        token: Option<&str>,
        name: &str,
        first: Vec<WorkerMessage>,
    ) -> Result<FakeWorker, Status> {
        let channel = Endpoint::from_shared(url.to_owned())
            .expect("a valid url")
            .connect()
            .await
            .expect("connect to reinsd");
        FakeWorker::open_on(channel, token, name, first).await
    }

    /// [`FakeWorker::open_as`] on a channel of the caller's (e.g. TLS with a client
    /// certificate: `reins_client::connect_channel`).
    pub async fn open_on(
        channel: Channel,
        token: Option<&str>,
        name: &str,
        first: Vec<WorkerMessage>,
    ) -> Result<FakeWorker, Status> {
        let (outbox, inbox) = mpsc::unbounded_channel();
        for message in first {
            outbox.send(message).expect("the stream is open");
        }
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(inbox));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .expect("a printable token");
            request.metadata_mut().insert("authorization", value);
        }
        let commands = WorkerServiceClient::new(channel.clone())
            .connect(request)
            .await?
            .into_inner();
        Ok(FakeWorker {
            name: name.to_owned(),
            welcome: None,
            outbox,
            commands,
            _channel: channel,
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.welcome.as_ref().expect("welcomed").worker_id
    }

    /// `name/worker_id`, as the server records it in `Task.worker`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.worker_id())
    }

    /// What the server does next, waiting at most `within`.
    pub async fn next_within(&mut self, within: Duration) -> Next {
        match tokio::time::timeout(within, self.commands.message()).await {
            Err(_) => Next::Quiet,
            Ok(Ok(Some(WorkerCommand {
                command: Some(command),
            }))) => Next::Command(command),
            Ok(Ok(Some(WorkerCommand { command: None }))) => {
                panic!("worker {}: an empty command", self.name)
            }
            Ok(Ok(None)) => Next::Closed(None),
            Ok(Err(status)) => Next::Closed(Some(status)),
        }
    }

    /// The next command; fails the test if none comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Command {
        match self.next_within(PATIENCE).await {
            Next::Command(command) => command,
            other => panic!("worker {}: expected a command, got {other:?}", self.name),
        }
    }

    pub async fn expect_assign(&mut self) -> Task {
        self.expect_assignment()
            .await
            .task
            .expect("the assignment's task")
    }

    /// The whole next assignment (with `budget_remaining`).
    pub async fn expect_assignment(&mut self) -> TaskAssignment {
        match self.next().await {
            Command::Assign(assignment) => assignment,
            other => panic!("worker {}: expected `assign`, got {other:?}", self.name),
        }
    }

    pub async fn expect_cancel(&mut self) -> CancelRequest {
        match self.next().await {
            Command::Cancel(cancel) => cancel,
            other => panic!("worker {}: expected `cancel`, got {other:?}", self.name),
        }
    }

    pub async fn expect_abort(&mut self) -> AbortTask {
        match self.next().await {
            Command::Abort(abort) => abort,
            other => panic!("worker {}: expected `abort`, got {other:?}", self.name),
        }
    }

    pub async fn expect_reconnect(&mut self) -> WorkerReconnect {
        match self.next().await {
            Command::Reconnect(reconnect) => reconnect,
            other => panic!("worker {}: expected `reconnect`, got {other:?}", self.name),
        }
    }

    /// The tasks the server adopted, as its `welcome` says.
    pub fn adopted(&self) -> &[String] {
        &self.welcome.as_ref().expect("welcomed").adopted
    }

    /// Ends this worker's side of the stream (the server's side stays open until it ends
    /// it), as a worker that moved away does.
    pub fn half_close(&mut self) {
        self.outbox = mpsc::unbounded_channel().0;
    }

    pub async fn expect_answer(&mut self) -> TaskAnswer {
        match self.next().await {
            Command::Answer(answer) => answer,
            other => panic!("worker {}: expected `answer`, got {other:?}", self.name),
        }
    }

    /// Asserts that the server sends nothing (and keeps the stream open) for `window`.
    pub async fn assert_quiet(&mut self, window: Duration) {
        match self.next_within(window).await {
            Next::Quiet => {}
            other => panic!(
                "worker {}: expected nothing for {window:?}, got {other:?}",
                self.name
            ),
        }
    }

    /// Waits for the server to end the stream; its error status (`None`: ended with OK).
    pub async fn closed(&mut self) -> Option<Status> {
        match self.next_within(PATIENCE).await {
            Next::Closed(status) => status,
            other => panic!(
                "worker {}: expected the stream to end, got {other:?}",
                self.name
            ),
        }
    }

    /// Sends any message (the test asserts what the server makes of it).
    pub fn send(&self, message: WorkerMessage) {
        self.outbox
            .send(message)
            .unwrap_or_else(|_| panic!("worker {}: the stream is closed", self.name));
    }

    pub fn progress(&self, task_id: &str, fraction: f64, text: &str) {
        self.send(message(Message::Progress(TaskProgress {
            task_id: task_id.to_owned(),
            fraction,
            message: text.to_owned(),
            partial_result: None,
            ..TaskProgress::default()
        })));
    }

    /// Progress that spent `usage` (increments).
    pub fn spend(&self, task_id: &str, usage: &[(&str, f64)]) {
        self.send(message(Message::Progress(TaskProgress {
            task_id: task_id.to_owned(),
            usage: usage.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..TaskProgress::default()
        })));
    }

    pub async fn expect_usage_ack(&mut self) -> UsageAck {
        match self.next().await {
            Command::UsageAck(ack) => ack,
            other => panic!("worker {}: expected `usage_ack`, got {other:?}", self.name),
        }
    }

    /// Progress with a checkpoint (appended to `partial_results`).
    pub fn checkpoint(&self, task_id: &str, fraction: f64, partial: serde_json::Value) {
        self.send(message(Message::Progress(TaskProgress {
            task_id: task_id.to_owned(),
            fraction,
            message: String::new(),
            partial_result: Some(json_to_value(&partial)),
            ..TaskProgress::default()
        })));
    }

    pub fn ask(&self, task_id: &str, question: &str) {
        self.ask_within(task_id, question, None);
    }

    /// A question that times out unanswered after `timeout`.
    pub fn ask_within(&self, task_id: &str, question: &str, timeout: Option<Duration>) {
        self.send(message(Message::Ask(TaskAsk {
            task_id: task_id.to_owned(),
            question: question.to_owned(),
            timeout: timeout.map(|t| prost_types::Duration::try_from(t).expect("a short timeout")),
        })));
    }

    pub fn complete(&self, task_id: &str, result: serde_json::Value) {
        self.send(message(Message::Complete(TaskComplete {
            task_id: task_id.to_owned(),
            result: Some(json_to_value(&result)),
        })));
    }

    pub fn fail(&self, task_id: &str, error: &str) {
        self.send(message(Message::Fail(TaskFail {
            task_id: task_id.to_owned(),
            error: error.to_owned(),
        })));
    }

    pub fn cancel_ack(&self, task_id: &str, result: serde_json::Value) {
        self.send(message(Message::CancelAck(CancelAck {
            task_id: task_id.to_owned(),
            result: Some(json_to_value(&result)),
        })));
    }

    /// The worker process dies: its stream and its connection go away.
    pub fn disconnect(self) {
        drop(self);
    }
}
