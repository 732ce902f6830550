//! WatchTask: a task's versions in order, from a resume point or from now, to the end;
//! versions missed on the way (a reconnect, a slow watcher) are filled in from the
//! task's history. A live version comes as the feed published it, shared with the task's
//! other watchers on this replica (with its encoding, see [`Published`]).

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use super::Engine;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::{Published, TaskRecords, Update, Updates};
use crate::task::{Task, TaskId};

impl Engine {
    /// The task's versions in order: from the one after `after_version` (a resume, replayed
    /// from the history), or from the task as it is now; ends after the terminal version.
    pub async fn watch(
        &self,
        caller: &Caller,
        id: TaskId,
        after_version: Option<u64>,
    ) -> Result<impl Stream<Item = Arc<Published>> + Send + 'static> {
        let updates = self.feeds.subscribe(id).await?;
        let current = self.check_as(caller, id).await?;
        if let Some(after) = after_version.filter(|after| *after > current.version) {
            // No watch ever returned that version: the client confused tasks or versions.
            return Err(Error::VersionAhead {
                id,
                after_version: after,
                current: current.version,
            });
        }
        // A finished task changes no more: nothing but what is already stored will come.
        let updates: Updates = if current.state.is_terminal() {
            Box::pin(futures_util::stream::empty())
        } else {
            updates
        };
        let backlog: VecDeque<Arc<Published>> = match after_version {
            None => VecDeque::from([Published::new(current)]),
            Some(after) => self
                .versions_after(id, after)
                .await?
                .ok_or(Error::HistoryUnavailable {
                    id,
                    after_version: after,
                })?
                .into_iter()
                .map(Published::new)
                .collect(),
        };
        let state = WatchState {
            id,
            records: Arc::clone(self.transitions.records_handle()),
            updates,
            backlog,
            last_version: after_version.unwrap_or(0),
            finished: false,
        };
        Ok(futures_util::stream::unfold(state, WatchState::step))
    }

    /// The versions of task `id` after `after_version` that its history still holds;
    /// `None` if it no longer reaches back that far.
    pub async fn versions_after(
        &self,
        id: TaskId,
        after_version: u64,
    ) -> Result<Option<Vec<Task>>> {
        Ok(self
            .transitions
            .records()
            .history(id, after_version)
            .await?)
    }
}

struct WatchState {
    id: TaskId,
    records: Arc<dyn TaskRecords>,
    updates: Updates,
    /// Versions to yield before reading more updates.
    backlog: VecDeque<Arc<Published>>,
    last_version: u64,
    finished: bool,
}

impl WatchState {
    async fn step(mut self) -> Option<(Arc<Published>, WatchState)> {
        while !self.finished {
            if let Some(task) = self.backlog.pop_front() {
                if task.version > self.last_version {
                    self.last_version = task.version;
                    // The terminal version is the last one yielded.
                    self.finished = task.state.is_terminal();
                    return Some((task, self));
                }
                continue;
            }
            match self.updates.next().await {
                Some(Update::Changed(task)) if task.version <= self.last_version + 1 => {
                    self.backlog.push_back(task);
                }
                // A gap, a lag or a reconnect: catch up from the history.
                Some(Update::Changed(_) | Update::Lagged) => self.catch_up().await,
                None => {
                    // The update stream closed: whatever is left is in the history.
                    self.catch_up().await;
                    if self.backlog.is_empty() {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Queues every version after the last one yielded: from the history, or just the
    /// latest record if the history no longer reaches back that far.
    async fn catch_up(&mut self) {
        match self.records.history(self.id, self.last_version).await {
            Ok(Some(versions)) => self
                .backlog
                .extend(versions.into_iter().map(Published::new)),
            _ => {
                if let Ok(Some(latest)) = self.records.get(self.id).await {
                    tracing::warn!(task = %self.id, from = self.last_version, to = latest.version, "a watcher skipped versions its history no longer holds");
                    self.backlog.push_back(Published::new(latest));
                }
            }
        }
    }
}
