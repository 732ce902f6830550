//! Runs one parsed `reins` command against the server and prints the response, as a
//! summary or as proto3 JSON; defines the errors the command line reports.

use std::{
    error::Error as _,
    io::{self, Write},
    process::ExitCode,
};

use reins_client::{
    Client, Credentials, describe_status,
    proto::{ListActiveResponse, Task},
};
use tokio_stream::StreamExt;
use tonic::Status;

use crate::{
    cli::{Cli, Command, ListArgs},
    proto_json::{self, ProtoMessage},
    render, watch,
};

/// Why a command failed; printed as `error: <this>` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach server at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error(transparent)]
    InvalidServer(reins_client::Error),
    #[error("{}", describe_status(.0))]
    Rpc(#[from] Status),
    #[error("cannot render the response as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    #[error("cannot listen for Ctrl-C: {0}")]
    Signal(io::Error),
    #[error("the watch of task {0} ended before the task finished")]
    WatchEndedEarly(String),
    #[error("the run ended before the task finished")]
    RunEndedEarly,
}

impl CliError {
    /// The reader of our output went away (`reins list --all | head`): not worth an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(err) if err.kind() == io::ErrorKind::BrokenPipe)
    }
}

pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let credentials = Credentials::from_files(
        cli.token.clone(),
        cli.ca_cert.as_deref(),
        cli.cert.as_deref(),
        cli.key.as_deref(),
    )
    .map_err(CliError::InvalidServer)?;
    let client = connect(&cli.server, &credentials).await?;
    let json = cli.json;
    match cli.command {
        Command::Start(args) => {
            let task = client.start(args.into_start_task()).await?;
            print(json, &task, render::task_summary)?;
        }
        Command::Check { id } => print(json, &client.check(id).await?, render::task_summary)?,
        Command::Run(args) => return watch::run(&client, args, json).await,
        Command::Cancel(args) => match args.id.clone() {
            Some(id) => {
                let reason = args.reason.unwrap_or_default();
                let response = if args.hard {
                    client.hard_cancel(id, reason).await?
                } else {
                    client.soft_cancel(id, reason, args.grace).await?
                };
                print(json, &response, render::cancel_summary)?;
            }
            None => {
                let response = client.cancel_tasks(args.bulk()).await?;
                print(json, &response, |response| {
                    render::bulk_cancel_summary(response, args.dry_run)
                })?;
            }
        },
        Command::List(args) => list(&client, &args, json).await?,
        Command::Watch(args) => return watch::watch(&client, &args, json).await,
        Command::Answer { id, text } => {
            print(json, &client.answer(id, text).await?, render::task_summary)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(server: &str, credentials: &Credentials) -> Result<Client, CliError> {
    Client::connect_with(server, credentials)
        .await
        .map_err(|err| match err {
            reins_client::Error::Connect(transport) => CliError::Unreachable {
                url: server.to_owned(),
                cause: error_chain(&transport),
            },
            other => CliError::InvalidServer(other),
        })
}

/// tonic's transport error says only "transport error"; the useful part (e.g.
/// "Connection refused") is further down the source chain, where hyper repeats some links.
fn error_chain(err: &tonic::transport::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        err.to_string()
    } else {
        causes.join(": ")
    }
}

/// Prints one page and, when there is more, the token to pass to `--page-token`; with
/// `--all`, every page as if it were one. In JSON both are a single ListActiveResponse.
async fn list(client: &Client, args: &ListArgs, json: bool) -> Result<(), CliError> {
    let response = if args.all {
        let tasks: Vec<Task> = client
            .list_all(args.filter())
            .collect::<Result<_, _>>()
            .await?;
        ListActiveResponse {
            tasks,
            next_page_token: String::new(),
        }
    } else {
        client.list(args.filter()).await?
    };
    print(json, &response, |response| {
        let mut lines: Vec<String> = response.tasks.iter().map(render::task_row).collect();
        if !response.next_page_token.is_empty() {
            lines.push(format!("next page token: {}", response.next_page_token));
        }
        lines.join("\n")
    })
}

fn print<M: ProtoMessage>(
    json: bool,
    message: &M,
    human: impl FnOnce(&M) -> String,
) -> Result<(), CliError> {
    let text = if json {
        proto_json::to_json(message)?
    } else {
        human(message)
    };
    // An empty list prints nothing rather than a blank line.
    if !text.is_empty() {
        writeln!(io::stdout(), "{text}")?;
    }
    Ok(())
}
