//! Prometheus metrics of one `reinsd` process: every metric, the registry that holds them,
//! and the few functions through which the place where an event happens records it.
//!
//! - gRPC server metrics with the go-grpc-prometheus names come from a tower layer
//!   ([`GrpcMetricsLayer`], `grpc.rs`) around every service;
//! - the store's requests, errors and latency from a decorator around the backend
//!   ([`MeteredStore`], `store.rs`);
//! - task metrics from the one place each event happens: a change of a record
//!   ([`Metrics::task_changed`], called by the engine's transitions after every stored
//!   change), a cancel call ([`Metrics::cancel_called`]), the code of a cancelled task
//!   stopping ([`Metrics::code_stopped`], called by the task's driver), a task running
//!   here ([`Metrics::running`]) and a watch open ([`Metrics::watching`]);
//! - values that live elsewhere (the cluster-wide queue depth, the workers connected here)
//!   are read when Prometheus scrapes, at most once per scrape (`http.rs`).
//!
//! One registry per process ([`metrics`]), like the process's log: the metrics describe
//! the process, and the components that record them need no handle passed down. Labels
//! are bounded sets only (kind, state, mode, outcome, store operation, gRPC method and
//! code), never task ids. Series are created at 0 before their first event where the
//! label values are known (cancel modes and outcomes, store operations, and every series
//! of a kind when this replica first starts a task of it): a counter that appears at 1
//! would hide its first event from `rate()` and `increase()`. Recording is a few atomic operations under a read lock; the
//! benchmark runs with metrics on.
//!
//! Served by `reinsd --metrics-listen ADDR` (`http.rs`) with `/healthz` and `/readyz`.

mod grpc;
pub mod http;
mod labels;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub(crate) use grpc::GrpcMetricsLayer;
pub(crate) use store::{MeteredStore, StoreHealth};

use crate::task::cancel::CancelOutcome;
use crate::task::{CancelInfo, CancelMode, Task, TaskState};
use labels::{
    CancelLabels, KindLabel, KindStateLabels, StateLabel, StopLabels, VersionLabel, mode_label,
    outcome_label, state_label,
};

/// Bucket bounds (seconds) of `reins_cancel_stop_seconds`: a 1-2-5 series from 0.1 ms, so
/// that the 0.1–5 ms a local stop takes is resolved, up to the 5 minutes a soft cancel's
/// grace may last before its escalation.
const STOP_BUCKETS: [f64; 20] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Bucket bounds (seconds) of the queue histograms: from a dispatch on the same replica
/// (under a millisecond) to a task that waited an hour for a worker.
const QUEUE_BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];
/// Bucket bounds (seconds) of `reins_store_request_seconds`: Redis answers in well under a
/// millisecond on a LAN; a command times out after 2 s.
const STORE_BUCKETS: [f64; 14] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>(make: fn() -> Histogram) -> Histograms<L> {
    Family::new_with_constructor(make)
}

/// Seconds from `from` to `to`; 0 if the clocks of two replicas put `to` first.
fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

/// Every metric of the process, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    grpc: grpc::GrpcMetrics,
    store: store::StoreMetrics,
    tasks_started: Family<KindLabel, Counter>,
    tasks_finished: Family<KindStateLabels, Counter>,
    cancels: Family<CancelLabels, Counter>,
    cancel_escalations: Family<KindLabel, Counter>,
    cancel_stop: Histograms<StopLabels>,
    dispatch: Histograms<KindLabel>,
    queue_wait: Histogram,
    tasks_running: Family<KindLabel, Gauge>,
    queue_depth: Gauge,
    watchers: Gauge,
    workers_connected: Family<KindLabel, Gauge>,
    worker_slots: Family<KindStateLabels, Gauge>,
    replicas_lost: Counter,
    settled_by_reaper: Family<StateLabel, Counter>,
    fenced_writes: Counter,
    /// The series of each kind met so far (see the module doc).
    kinds: RwLock<HashMap<String, Arc<KindSeries>>>,
}

/// The metrics of this process.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let grpc = grpc::GrpcMetrics::register(&mut registry);
        let store = store::StoreMetrics::register(&mut registry);
        let mut metrics = Metrics {
            registry,
            grpc,
            store,
            tasks_started: Family::default(),
            tasks_finished: Family::default(),
            cancels: Family::default(),
            cancel_escalations: Family::default(),
            cancel_stop: histograms(|| Histogram::new(STOP_BUCKETS)),
            dispatch: histograms(|| Histogram::new(QUEUE_BUCKETS)),
            queue_wait: Histogram::new(QUEUE_BUCKETS),
            tasks_running: Family::default(),
            queue_depth: Gauge::default(),
            watchers: Gauge::default(),
            workers_connected: Family::default(),
            worker_slots: Family::default(),
            replicas_lost: Counter::default(),
            settled_by_reaper: Family::default(),
            fenced_writes: Counter::default(),
            kinds: RwLock::default(),
        };
        metrics.register_task_metrics();
        for mode in [CancelMode::Soft, CancelMode::Hard] {
            for outcome in [
                CancelOutcome::Cancelled,
                CancelOutcome::Requested,
                CancelOutcome::AlreadyCancelled,
                CancelOutcome::AlreadyFinished,
            ] {
                drop(metrics.cancels.get_or_create(&CancelLabels {
                    mode: mode_label(mode),
                    outcome: outcome_label(outcome),
                }));
            }
        }
        // What settling a lost run can make of it (`state_machine::lose`).
        for state in [TaskState::Pending, TaskState::Failed, TaskState::Cancelled] {
            drop(metrics.settled_by_reaper.get_or_create(&StateLabel {
                state: state_label(state),
            }));
        }
        metrics
    }

    /// The series of `kind`, created at 0 the first time this replica meets the kind, then
    /// looked up by name only (no label to build, nothing allocated).
    fn kind(&self, kind: &str) -> Arc<KindSeries> {
        if let Some(series) = self
            .kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
        {
            return Arc::clone(series);
        }
        let mut kinds = self.kinds.write().unwrap_or_else(|p| p.into_inner());
        let series = kinds
            .entry(kind.to_owned())
            .or_insert_with(|| Arc::new(self.kind_series(kind)));
        Arc::clone(series)
    }

    fn kind_series(&self, kind: &str) -> KindSeries {
        let label = KindLabel {
            kind: kind.to_owned(),
        };
        let finished = |state| {
            self.tasks_finished.get_or_create_owned(&KindStateLabels {
                kind: kind.to_owned(),
                state: state_label(state),
            })
        };
        let stop = |mode| {
            self.cancel_stop.get_or_create_owned(&StopLabels {
                mode: mode_label(mode),
                kind: kind.to_owned(),
            })
        };
        KindSeries {
            started: self.tasks_started.get_or_create_owned(&label),
            completed: finished(TaskState::Completed),
            failed: finished(TaskState::Failed),
            cancelled: finished(TaskState::Cancelled),
            escalations: self.cancel_escalations.get_or_create_owned(&label),
            dispatch: self.dispatch.get_or_create_owned(&label),
            soft_stop: stop(CancelMode::Soft),
            hard_stop: stop(CancelMode::Hard),
            running: self.tasks_running.get_or_create_owned(&label),
        }
    }

    fn register_task_metrics(&mut self) {
        let r = &mut self.registry;
        r.register(
            "reins_tasks_started",
            "Tasks started on this replica (each attempt), by kind",
            self.tasks_started.clone(),
        );
        r.register(
            "reins_tasks_finished",
            "Tasks this replica moved to a terminal state, by kind and state",
            self.tasks_finished.clone(),
        );
        r.register(
            "reins_cancels",
            "Cancels asked of this replica (cancel calls, a watch's cancel_on_disconnect, the shutdown drain), by mode and outcome",
            self.cancels.clone(),
        );
        r.register(
            "reins_cancel_escalations",
            "Soft cancels this replica escalated to hard at the end of their grace, by kind",
            self.cancel_escalations.clone(),
        );
        r.register(
            "reins_cancel_stop_seconds",
            "From the moment a cancel was recorded to the moment this replica confirmed the task's code stopped",
            self.cancel_stop.clone(),
        );
        r.register(
            "reins_dispatch_seconds",
            "From a task's creation to its first start, by kind",
            self.dispatch.clone(),
        );
        r.register(
            "reins_queue_wait_seconds",
            "How long each start waited PENDING (since creation, or since a requeue)",
            self.queue_wait.clone(),
        );
        r.register(
            "reins_tasks_running",
            "Tasks whose code runs on this replica or on its workers, by kind",
            self.tasks_running.clone(),
        );
        r.register(
            "reins_queue_depth",
            "PENDING tasks in the cluster-wide queue, read at each scrape",
            self.queue_depth.clone(),
        );
        r.register(
            "reins_watchers",
            "Open WatchTask streams on this replica",
            self.watchers.clone(),
        );
        r.register(
            "reins_workers_connected",
            "Workers connected to this replica, by kind served (a worker counts once per kind)",
            self.workers_connected.clone(),
        );
        r.register(
            "reins_worker_slots",
            "Slots of the workers connected here, used or free, by kind served",
            self.worker_slots.clone(),
        );
        r.register(
            "reins_replicas_lost",
            "Replicas whose lapsed lease this replica noticed and whose tasks it settled",
            self.replicas_lost.clone(),
        );
        r.register(
            "reins_tasks_settled_by_reaper",
            "Tasks of lost replicas (or of this replica's previous life) settled here, by resulting state",
            self.settled_by_reaper.clone(),
        );
        r.register(
            "reins_fenced_writes",
            "Writes the store refused because another owner or attempt holds the task",
            self.fenced_writes.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register(
            "reins_build_info",
            "The version of reinsd; always 1",
            build_info,
        );
    }

    /// Records a change of a task that this replica stored: a start (with how long the
    /// task waited), an escalation, a terminal state.
    pub fn task_changed(&self, before: &Task, after: &Task) {
        let now = after.updated_at;
        let started = after.state.is_started() && before.state == TaskState::Pending;
        let escalated = |task: &Task| task.cancel.as_ref().is_some_and(|c| c.escalated);
        let escalation = escalated(after) && !escalated(before);
        let finished = after.state.is_terminal() && !before.state.is_terminal();
        if !(started || escalation || finished) {
            // Most changes (progress, checkpoints) count nowhere.
            return;
        }
        let series = self.kind(&after.kind);
        if started {
            series.started.inc();
            self.queue_wait
                .observe(seconds_between(before.updated_at, now));
            if after.attempt == 1 {
                series
                    .dispatch
                    .observe(seconds_between(after.created_at, now));
            }
        }
        if escalation {
            series.escalations.inc();
        }
        if finished {
            match after.state {
                TaskState::Completed => series.completed.inc(),
                TaskState::Failed => series.failed.inc(),
                _ => series.cancelled.inc(),
            };
        }
    }

    /// A cancel (a SoftCancel or HardCancel call, a watch's `cancel_on_disconnect`, the
    /// shutdown drain) that ended with `outcome`.
    pub fn cancel_called(&self, mode: CancelMode, outcome: CancelOutcome) {
        self.cancels
            .get_or_create(&CancelLabels {
                mode: mode_label(mode),
                outcome: outcome_label(outcome),
            })
            .inc();
    }

    /// The code of a task of `kind` that was asked to stop by `cancel` stopped at
    /// `stopped_at` (it returned, or its future was dropped: process killed, worker told to
    /// abort). The cancel's time is the recording replica's clock.
    pub fn code_stopped(&self, kind: &str, cancel: &CancelInfo, stopped_at: SystemTime) {
        // An escalated soft cancel is timed, and labelled, as the soft cancel that was
        // asked for: the hard stops stay the stops of hard cancels.
        let mode = if cancel.escalated {
            CancelMode::Soft
        } else {
            cancel.mode
        };
        let series = self.kind(kind);
        let stops = match mode {
            CancelMode::Soft => &series.soft_stop,
            CancelMode::Hard => &series.hard_stop,
        };
        stops.observe(seconds_between(cancel.requested_at, stopped_at));
    }

    /// Counts a task of `kind` as running here while the guard lives.
    pub fn running(&self, kind: &str) -> Tracked {
        Tracked::new(self.kind(kind).running.clone())
    }

    /// Counts an open watch while the guard lives.
    pub fn watching(&self) -> Tracked {
        Tracked::new(self.watchers.clone())
    }

    /// This replica settled the tasks of a replica whose lease lapsed.
    pub fn replica_lost(&self) {
        self.replicas_lost.inc();
    }

    /// A task of a lost replica was settled here and ended in `state`.
    pub fn settled_by_reaper(&self, state: TaskState) {
        self.settled_by_reaper
            .get_or_create(&StateLabel {
                state: state_label(state),
            })
            .inc();
    }

    /// The store refused a write because another owner or attempt holds the task.
    pub fn fenced_write(&self) {
        self.fenced_writes.inc();
    }

    /// The queue depth read for a scrape.
    fn set_queue_depth(&self, depth: u64) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The workers connected here as they are at a scrape: per kind, how many workers
    /// serve it and their used and free slots.
    fn set_workers(&self, kinds: &[WorkerKindOccupancy]) {
        // Kinds no worker serves any more disappear instead of staying at their last value.
        self.workers_connected.clear();
        self.worker_slots.clear();
        for occupancy in kinds {
            let kind = || occupancy.kind.clone();
            self.workers_connected
                .get_or_create(&KindLabel { kind: kind() })
                .set(occupancy.workers as i64);
            for (state, slots) in [("used", occupancy.used), ("free", occupancy.free)] {
                self.worker_slots
                    .get_or_create(&KindStateLabels {
                        kind: kind(),
                        state,
                    })
                    .set(slots as i64);
            }
        }
    }
}

/// The series of one task kind on this replica.
struct KindSeries {
    started: Counter,
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    escalations: Counter,
    dispatch: Histogram,
    soft_stop: Histogram,
    hard_stop: Histogram,
    running: Gauge,
}

/// How the workers connected here serve one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerKindOccupancy {
    pub kind: String,
    pub workers: usize,
    pub used: usize,
    pub free: usize,
}

/// A gauge raised by one while this guard lives (a running task, an open watch); dropping
/// it (also while unwinding) lowers it again.
pub(crate) struct Tracked(Gauge);

impl Tracked {
    fn new(gauge: Gauge) -> Tracked {
        gauge.inc();
        Tracked(gauge)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
