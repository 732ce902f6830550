//! A task version as the feeds publish it: one allocation that every local subscriber of
//! the task shares (10,000 watchers of a task on a replica hold the same `Arc`), which
//! also keeps the version's wire encoding. The first watcher that sends the version in a
//! view encodes it; every other watcher's event reuses those bytes ([`Published::event`]),
//! so a change costs one conversion and one encoding per view, not one per watcher.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use reins_proto::encoded::{EncodedTask, EncodedTaskEvent};

use crate::convert::{self, View};
use crate::task::Task;

#[derive(Debug)]
pub struct Published {
    task: Task,
    /// The task encoded in [`View::Full`], made when first asked for.
    full: OnceLock<EncodedTask>,
    /// The same in [`View::Basic`].
    basic: OnceLock<EncodedTask>,
}

impl Published {
    pub fn new(task: Task) -> Arc<Published> {
        Arc::new(Published {
            task,
            full: OnceLock::new(),
            basic: OnceLock::new(),
        })
    }

    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The watch event of this version, with the task in `view`.
    pub fn event(&self, view: View) -> EncodedTaskEvent {
        let encoded = match view {
            View::Full => &self.full,
            View::Basic => &self.basic,
        };
        let task = encoded.get_or_init(|| EncodedTask::new(&convert::task_view(&self.task, view)));
        EncodedTaskEvent::new(task.clone(), convert::timestamp(self.task.updated_at))
    }
}

impl Deref for Published {
    type Target = Task;

    fn deref(&self) -> &Task {
        &self.task
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use reins_proto::v1 as pb;

    use std::time::SystemTime;

    use super::*;
    use crate::task::{NewTask, TaskId};

    fn published() -> Arc<Published> {
        let serde_json::Value::Object(params) =
            serde_json::json!({"steps": 3, "nested": {"a": [1, "two", null]}})
        else {
            unreachable!("an object")
        };
        let spec = NewTask {
            kind: "sleep".into(),
            params,
            labels: [("team".to_owned(), "a".to_owned())].into(),
            ..NewTask::default()
        };
        let mut task = Task::new(TaskId::now_v7(), spec, SystemTime::now());
        task.result = Some(serde_json::json!({"done": true}));
        task.version = 4;
        Published::new(task)
    }

    /// What a watch event was before it was encoded once: the converted task, encoded by
    /// prost for each watcher.
    fn converted(task: &Task, view: View) -> pb::TaskEvent {
        pb::TaskEvent {
            task: Some(convert::task_view(task, view)),
            time: Some(convert::timestamp(task.updated_at)),
            heartbeat: false,
        }
    }

    #[test]
    fn an_event_decodes_to_the_converted_task_in_each_view() {
        let version = published();
        for view in [View::Full, View::Basic] {
            let bytes = version.event(view).encode_to_vec();
            assert_eq!(bytes, converted(&version, view).encode_to_vec(), "{view:?}");
            assert_eq!(
                pb::TaskEvent::decode(bytes.as_slice()).unwrap(),
                converted(&version, view),
                "{view:?}"
            );
        }
        let basic = pb::TaskEvent::decode(version.event(View::Basic).encode_to_vec().as_slice());
        assert_eq!(
            basic.unwrap().task.unwrap().params,
            None,
            "BASIC leaves params out"
        );
    }

    #[test]
    fn every_event_of_a_version_shares_one_encoding_per_view() {
        let version = published();
        let first = version.event(View::Full).task.unwrap();
        let again = version.event(View::Full).task.unwrap();
        assert_eq!(first, again);
        assert!(version.full.get().is_some() && version.basic.get().is_none());
    }
}
