//! Assembles and runs the server: the store (Redis, or the embedded one), the task
//! service, health, reflection, the replica's background loops and graceful shutdown.
//!
//! Shutdown (SIGTERM/SIGINT): health turns NOT_SERVING and StartTask UNAVAILABLE at once;
//! running tasks get `--shutdown-grace` to finish, then are soft-cancelled with
//! [`SHUTDOWN_SOFT_WINDOW`] to stop before escalation hard-cancels them; then the
//! background loops stop (and are waited for), the lease is released, open watch streams
//! end and the process exits 0. With Redis, queued tasks stay PENDING for the other
//! replicas.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reins_proto::v1::task_service_server::TaskServiceServer;
use reins_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::{TaskApi, WorkerApi};
use crate::auth::{Auth, AuthLayer};
use crate::background::Background;
use crate::cluster;
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::executor::Kinds;
use crate::listener;
use crate::reload;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisStore, redact};
use crate::store::{Store, TaskStore};
use crate::tls::ServerTls;

/// How long tasks still running at the end of the shutdown grace get to stop after their
/// soft cancel, before escalation.
const SHUTDOWN_SOFT_WINDOW: Duration = Duration::from_secs(2);
/// How long in-flight calls get to finish once the tasks are settled.
const CONNECTION_DRAIN: Duration = Duration::from_secs(2);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TASK_SERVICE: &str = "reins.v1.TaskService";
const WORKER_SERVICE: &str = "reins.v1.WorkerService";

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown_signal: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let connection_limits = config.connection_limits(crate::open_files::raise_to_hard_limit());
    tracing::info!(?connection_limits, "connections");
    let stop_serving = CancellationToken::new();
    let background = Background::new();
    let tls = match config.tls_files() {
        Some(files) => {
            let tls = ServerTls::load(files)?;
            let reloaded = Arc::clone(&tls);
            reload::watch(
                &background,
                "TLS certificate",
                tls.files().paths(),
                config.reload_interval,
                move || reloaded.reload(),
            );
            tracing::info!(files = ?tls.files(), "serving TLS");
            Some(tls)
        }
        None => None,
    };
    let auth = match &config.auth_config {
        Some(file) => {
            let auth = Auth::load(file)?;
            let reloaded = Arc::clone(&auth);
            reload::watch(
                &background,
                "auth config",
                auth.files(),
                config.reload_interval,
                move || reloaded.reload(),
            );
            tracing::info!(file = %file.display(), "authentication on");
            auth
        }
        None => {
            warn_if_open(&listener);
            Auth::off()
        }
    };
    let backend: Arc<dyn TaskStore> = match &config.redis_url {
        Some(url) => {
            let redis = redact(url);
            tracing::info!(%redis, prefix = %config.redis_prefix, "task state in Redis");
            Arc::new(RedisStore::connect_with(
                url,
                &config.redis_access()?,
                &config.redis_prefix,
                config.retention,
                &background,
            )?)
        }
        None => {
            tracing::info!("task state in the embedded in-memory store (single replica)");
            MemoryStore::start(config.retention, &background)
        }
    };
    let store = Store::new(backend);
    let engine = Engine::new(
        EngineConfig {
            replica_id: config.replica_id(),
            default_grace: config.default_grace,
            max_concurrency: config.max_concurrency as usize,
            worker_kinds: config.worker_kinds.clone(),
            learn_worker_kinds: config.learn_worker_kinds,
            worker_kind_ttl: config.worker_kind_ttl,
            limits: config.limits,
            checkpoint_limits: config.checkpoint_limits(),
        },
        &store,
        Kinds::builtin(config.exec_policy()),
        &background,
    );
    cluster::start(&engine, &store, config.lease_ttl, &background).await;
    let stop_streams = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in ["", TASK_SERVICE, WORKER_SERVICE] {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let task_service = TaskServiceServer::new(TaskApi::new(
        Arc::clone(&engine),
        config.limits,
        stop_streams.clone(),
        config.watch_heartbeat(),
    ))
    .max_decoding_message_size(config.max_message_size)
    .max_encoding_message_size(config.max_message_size);

    let mut server = Server::builder()
        // Lost workers (and clients) are noticed by HTTP/2 keepalive pings.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout));
    if let Some(age) = config.max_connection_age {
        // A GOAWAY at that age; the grace after it is enforced by `listener` (tonic's own
        // grace replaces the GOAWAY with a hard close at age + grace).
        server = server.max_connection_age(age);
    }
    let serving = server
        .layer(listener::CountCallsLayer)
        .layer(tower::util::MapResponseLayer::new(
            crate::api::status::client_mistakes,
        ))
        .layer(AuthLayer::new(Arc::clone(&auth)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(task_service)
        .add_service(
            WorkerServiceServer::new(WorkerApi::new(
                Arc::clone(&engine),
                config.limits,
                stop_streams.clone(),
                config.keepalive_interval,
            ))
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size),
        )
        .serve_with_incoming_shutdown(
            listener::incoming(listener, connection_limits, tls),
            stop_serving.clone().cancelled_owned(),
        );
    let serving = tokio::spawn(serving);

    shutdown_signal.await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    for service in ["", TASK_SERVICE, WORKER_SERVICE] {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    engine
        .drain(config.shutdown_grace, SHUTDOWN_SOFT_WINDOW)
        .await;
    // Nothing runs here any more: stop the lease, reaper, dispatch and feed loops (and wait
    // for them) before giving the lease up, so none renews it afterwards.
    background.shut_down().await;
    if let Err(err) = store.membership.release_lease(engine.replica_id()).await {
        tracing::warn!(%err, "cannot release this replica's lease; it lapses by itself");
    }
    stop_streams.cancel();
    stop_serving.cancel();
    match tokio::time::timeout(CONNECTION_DRAIN, serving).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => return Err(join.into()),
        Err(_) => tracing::warn!("connections still open after the drain; exiting anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Without auth anyone who reaches the port can read and control every task: fine on
/// loopback, worth a loud warning anywhere else.
fn warn_if_open(listener: &TcpListener) {
    let loopback = listener
        .local_addr()
        .is_ok_and(|address| address.ip().is_loopback());
    if !loopback {
        tracing::warn!(
            "AUTHENTICATION IS OFF on a non-loopback address: anyone who can reach this port \
             can read, start and cancel every task and connect as a worker. Give \
             --auth-config (and --tls-cert) to serve beyond this machine."
        );
    }
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(reins_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // Both reflection versions, so that either one lists both.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        // google.rpc error details, so that grpcurl and friends can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
