//! The embedded store's indexes over its records: the active tasks (all, by kind, by
//! session), the pending ones (all, by tenant), children and request ids, kept in step
//! with each record by the write that changes it.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::Inner;
use crate::store::ActiveFilter;
use crate::task::{Task, TaskId, TaskState};

impl Inner {
    pub(super) fn activate(&mut self, task: &Task) {
        self.active.insert(task.id);
        self.active_by_kind
            .entry(task.kind.clone())
            .or_default()
            .insert(task.id);
        if !task.session_id.is_empty() {
            self.active_by_session
                .entry(task.session_id.clone())
                .or_default()
                .insert(task.id);
        }
    }

    fn deactivate(&mut self, task: &Task) {
        self.active.remove(&task.id);
        for (index, key) in [
            (&mut self.active_by_kind, &task.kind),
            (&mut self.active_by_session, &task.session_id),
        ] {
            if let Some(ids) = index.get_mut(key) {
                ids.remove(&task.id);
                if ids.is_empty() {
                    index.remove(key);
                }
            }
        }
    }

    /// The ids a listing with `filter` must look at, after `after` in creation order: those
    /// of the smallest index the filter names (kind, session, parent), or every active one.
    pub(super) fn candidates(
        &self,
        filter: &ActiveFilter,
        after: Option<TaskId>,
    ) -> Box<dyn Iterator<Item = TaskId> + '_> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        // `None`: an index with no entry for the key, so nothing can match.
        let mut smallest: Option<&BTreeSet<TaskId>> = Some(&self.active);
        for (index, key) in [
            (&self.active_by_kind, &filter.kind),
            (&self.active_by_session, &filter.session_id),
        ] {
            if let Some(key) = key {
                let ids = index.get(key);
                if ids.map_or(0, BTreeSet::len) < smallest.map_or(usize::MAX, BTreeSet::len) {
                    smallest = ids;
                }
            }
        }
        let smallest_len = smallest.map_or(0, BTreeSet::len);
        if let Some(parent) = filter.parent_id {
            let children = self.children.get(&parent).map_or(&[][..], Vec::as_slice);
            if children.len() < smallest_len {
                // Children are kept in the order they were created in, which two concurrent
                // starts can swap; a parent's children are few, so sort them.
                let mut ids: Vec<TaskId> = children
                    .iter()
                    .copied()
                    .filter(|id| after.is_none_or(|after| *id > after))
                    .collect();
                ids.sort_unstable();
                return Box::new(ids.into_iter());
            }
        }
        match smallest {
            Some(ids) => Box::new(ids.range((start, Bound::Unbounded)).copied()),
            None => Box::new(std::iter::empty()),
        }
    }

    pub(super) fn index(&mut self, task: &Task) {
        if task.state.is_terminal() {
            self.deactivate(task);
            self.finished
                .push_back((task.finished_at.unwrap_or(task.updated_at), task.id));
        }
        if task.state == TaskState::Pending {
            // New, or a lost run put back in the queue.
            self.pending.insert(task.id);
            self.pending_by_tenant
                .entry(task.tenant.clone())
                .or_default()
                .insert(task.id);
        } else {
            self.pending.remove(&task.id);
            if let Some(queue) = self.pending_by_tenant.get_mut(&task.tenant) {
                queue.remove(&task.id);
                if queue.is_empty() {
                    self.pending_by_tenant.remove(&task.tenant);
                }
            }
        }
    }

    pub(super) fn forget(&mut self, id: TaskId) {
        let Some(entry) = self.tasks.remove(&id) else {
            return;
        };
        let task = entry.task;
        let request = (task.tenant.clone(), task.request_id.clone());
        if !task.request_id.is_empty() && self.by_request_id.get(&request) == Some(&id) {
            self.by_request_id.remove(&request);
        }
        self.children.remove(&id);
        if let Some(parent) = task.parent_id
            && let Some(siblings) = self.children.get_mut(&parent)
        {
            siblings.retain(|child| *child != id);
            if siblings.is_empty() {
                self.children.remove(&parent);
            }
        }
    }
}
