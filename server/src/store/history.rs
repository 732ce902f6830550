//! The bounded history of a task's versions, the one rule every backend applies when a
//! watcher resumes (`WatchTask.after_version`) or fills a gap: replay what the history
//! holds after a version, or say that it no longer reaches back that far.

use crate::task::Task;

/// How many versions of each task a store keeps for watch resume.
pub const HISTORY_LEN: usize = 100;

/// The versions after `after_version` from a task's kept `history` (oldest first).
///
/// `None` if the history is empty, or if versions after `after_version` exist that it no
/// longer holds (its oldest entry is later than `after_version + 1`). Resuming at or after
/// the newest version is not a gap: it replays nothing.
pub fn versions_after<'a, I>(history: I, after_version: u64) -> Option<Vec<Task>>
where
    I: DoubleEndedIterator<Item = &'a Task> + Clone,
{
    let oldest = history.clone().next()?;
    let newest = history.clone().next_back()?;
    if oldest.version > after_version.saturating_add(1) && newest.version > after_version {
        return None;
    }
    Some(
        history
            .filter(|task| task.version > after_version)
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::task::{NewTask, TaskId};

    fn versions(range: std::ops::RangeInclusive<u64>) -> Vec<Task> {
        let task = Task::new(TaskId::now_v7(), NewTask::default(), SystemTime::now());
        range
            .map(|version| Task {
                version,
                ..task.clone()
            })
            .collect()
    }

    fn replayed(history: &[Task], after: u64) -> Option<Vec<u64>> {
        versions_after(history.iter(), after).map(|v| v.iter().map(|t| t.version).collect())
    }

    #[test]
    fn replays_what_follows_a_version_the_history_reaches() {
        let history = versions(5..=8);
        assert_eq!(replayed(&history, 4), Some(vec![5, 6, 7, 8]));
        assert_eq!(replayed(&history, 6), Some(vec![7, 8]));
        assert_eq!(replayed(&history, 8), Some(vec![]));
        assert_eq!(
            replayed(&history, 20),
            Some(vec![]),
            "nothing after the end"
        );
    }

    #[test]
    fn a_gap_before_the_oldest_kept_version_is_reported() {
        let history = versions(5..=8);
        assert_eq!(replayed(&history, 3), None);
        assert_eq!(replayed(&[], 0), None);
        assert_eq!(replayed(&history, u64::MAX), Some(vec![]));
    }
}
