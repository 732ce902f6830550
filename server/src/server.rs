//! Assembles and runs the server: the store (Redis, or the embedded one), the task
//! service, health, reflection, the replica's background loops and graceful shutdown.
//!
//! Shutdown (SIGTERM/SIGINT): at once, health turns NOT_SERVING, StartTask UNAVAILABLE,
//! workers are asked to reconnect elsewhere and, with Redis, every open connection gets a
//! GOAWAY (new calls go elsewhere; calls in flight finish) and watch streams end
//! UNAVAILABLE (watch again through another replica). Running tasks get `--shutdown-grace` to finish
//! (see `Engine::drain` for what happens to those still running then, within
//! [`SHUTDOWN_SOFT_WINDOW`]); then the background loops stop (and are waited for), the
//! lease is released, the streams still open end UNAVAILABLE with their trailers, and the
//! process exits 0 once the connections are closed. With Redis, queued tasks stay PENDING
//! for the other replicas.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reins_proto::v1::task_service_server::TaskServiceServer;
use reins_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::api::{TaskApi, WorkerApi};
use crate::auth::{Auth, AuthLayer};
use crate::background::Background;
use crate::cluster;
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::executor::Kinds;
use crate::listener;
use crate::readiness::Readiness;
use crate::reload;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisStore, redact};
use crate::store::{Store, TaskStore};
use crate::telemetry::metrics::{self, GrpcMetricsLayer, MeteredStore};
use crate::tls::ServerTls;

/// How long tasks still running at the end of the shutdown grace get to stop after their
/// soft cancel, before escalation.
const SHUTDOWN_SOFT_WINDOW: Duration = Duration::from_secs(2);
/// How long in-flight calls get to finish once the tasks are settled.
const CONNECTION_DRAIN: Duration = Duration::from_secs(2);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TASK_SERVICE: &str = "reins.v1.TaskService";
const WORKER_SERVICE: &str = "reins.v1.WorkerService";
/// The names gRPC health answers for, all with the one readiness (`readiness.rs`).
const HEALTH_SERVICES: &[&str] = &["", TASK_SERVICE, WORKER_SERVICE];

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown_signal: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let connection_limits = config.connection_limits(crate::open_files::raise_to_hard_limit());
    tracing::info!(?connection_limits, "connections");
    let metrics_listener = match config.metrics_listen {
        Some(address) => {
            let listener = TcpListener::bind(address).await?;
            tracing::info!(address = %listener.local_addr()?, "metrics, /healthz and /readyz served");
            Some(listener)
        }
        None => None,
    };
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
                usize::from(config.redis_shards),
                config.retention,
                &background,
            )?)
        }
        None => {
            tracing::info!("task state in the embedded in-memory store (single replica)");
            MemoryStore::start(config.retention, &background)
        }
    };
    // Every store request is measured, and tells readiness whether the store answers.
    let backend = MeteredStore::new(backend);
    let readiness = Arc::new(Readiness::new(backend.health()));
    let store = Store::new(Arc::new(backend));
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
            cancelled_session_ttl: config.cancelled_session_ttl,
            hand_back_on_drain: config.redis_url.is_some(),
        },
        &store,
        Kinds::builtin(config.exec_policy()),
        &background,
    );
    cluster::start(&engine, &store, config.lease_ttl, &background).await;
    // Watch streams end at once when a drain begins if the store is shared (the client
    // watches again through another replica), at the end of it with the embedded store
    // (no other replica could tell the watcher how its task ends); worker streams at the
    // end (their workers are asked to move first).
    let stop_watches = CancellationToken::new();
    let stop_streams = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    readiness.tell(&health, HEALTH_SERVICES).await;
    background.spawn(Arc::clone(&readiness).report(health.clone(), HEALTH_SERVICES));
    let stop_metrics = CancellationToken::new();
    if let Some(listener) = metrics_listener {
        let sources = metrics::http::Sources {
            readiness: Arc::clone(&readiness),
            queue: Arc::clone(&store.queue),
            workers: Arc::new({
                let engine = Arc::clone(&engine);
                move || engine.worker_occupancy()
            }),
        };
        metrics::http::spawn(listener, sources, stop_metrics.clone());
    }
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let task_service = TaskServiceServer::new(TaskApi::new(
        Arc::clone(&engine),
        config.limits,
        stop_watches.clone(),
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
    let router = server
        .layer(GrpcMetricsLayer::for_services(DESCRIPTOR_SETS))
        .layer(listener::CountCallsLayer)
        // Inside the call counter (which gives it the connection's addresses), outside the
        // status mapping (so the span records the code the client gets).
        .layer(crate::telemetry::traces::grpc::layer())
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
        );
    let incoming = listener::Incoming::new(listener, connection_limits, tls);
    let go_away = CancellationToken::new();
    let serving = tokio::spawn(
        router
            .clone()
            .serve_with_incoming_shutdown(incoming.stream(), go_away.clone().cancelled_owned()),
    );

    shutdown_signal.await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    readiness.drain();
    readiness.tell(&health, HEALTH_SERVICES).await;
    // With a shared store every open connection gets its GOAWAY now, so new calls go to
    // the other replicas (calls in flight carry on to their end), and watches end so that
    // their clients watch through another replica. Newcomers are still served until the
    // end, by a second server over the same listener: probes see NOT_SERVING rather than a
    // refused connection, and a client not yet told that this replica is going gets
    // UNAVAILABLE for new work and answers for the rest. With the embedded store there is
    // no elsewhere: connections are served until the end of the drain, as before.
    let shared_store = config.redis_url.is_some();
    let serving_late = shared_store.then(|| {
        go_away.cancel();
        stop_watches.cancel();
        tokio::spawn(router.serve_with_incoming_shutdown(
            incoming.stream(),
            stop_serving.clone().cancelled_owned(),
        ))
    });
    drop(incoming);
    engine
        .drain(config.shutdown_grace, SHUTDOWN_SOFT_WINDOW)
        .await;
    // Nothing runs here any more: stop the lease, reaper, dispatch and feed loops (and wait
    // for them) before giving the lease up, so none renews it afterwards.
    background.shut_down().await;
    if let Err(err) = store.membership.release_lease(engine.replica_id()).await {
        tracing::warn!(%err, "cannot release this replica's lease; it lapses by itself");
    }
    // Every stream still open ends with its status and trailers (UNAVAILABLE: call again
    // elsewhere) before its connection closes.
    go_away.cancel();
    stop_watches.cancel();
    stop_streams.cancel();
    stop_serving.cancel();
    let all = async {
        serving.await??;
        if let Some(late) = serving_late {
            late.await??;
        }
        Ok::<(), BoxError>(())
    };
    match tokio::time::timeout(CONNECTION_DRAIN, all).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("connections still open after the drain; exiting anyway"),
    }
    // Last: /readyz said "not ready" to the end.
    stop_metrics.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// The services served, for reflection and for the gRPC metrics' method table.
const DESCRIPTOR_SETS: &[&[u8]] = &[
    reins_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    // Both reflection versions, so that either one lists both.
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

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
    DESCRIPTOR_SETS
        .iter()
        .fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
        // google.rpc error details, so that grpcurl and friends can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
