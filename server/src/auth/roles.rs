//! Which role each RPC needs, by method-name pattern so that RPCs added later fall under
//! the right role without an edit here, and unknown ones need `admin` (default deny):
//!
//! | service | methods | role |
//! |---|---|---|
//! | `grpc.health.v1.Health`, `grpc.reflection.*` | all | none (open: probes, grpcurl) |
//! | `reins.v1.TaskService` | `Check*`, `List*`, `Watch*`, `Get*` | viewer |
//! | `reins.v1.TaskService` | `Start*`, `Run*`, `Answer*`, `*Cancel*` | operator |
//! | `reins.v1.WorkerService` | `Connect` | worker (kinds checked on `hello`) |
//! | anything else | | admin |
//!
//! Roles include the ones below them: operator ⊃ viewer; admin ⊃ all, in every tenant.
//! `worker` is apart: a worker principal cannot read or start tasks.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    Viewer,
    Operator,
    Worker,
    Admin,
}

impl Role {
    pub(crate) fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "worker" => Some(Role::Worker),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    /// Whether holding `self` grants what `needed` grants.
    pub(crate) fn grants(self, needed: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => matches!(needed, Role::Operator | Role::Viewer),
            Role::Viewer => needed == Role::Viewer,
            Role::Worker => needed == Role::Worker,
        }
    }
}

/// What a call to `path` (`/package.Service/Method`) needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    Nothing,
    Role(Role),
}

pub(crate) fn needed_for(path: &str) -> Needs {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
        return Needs::Nothing;
    }
    let role = match service {
        "reins.v1.TaskService" => task_method(method),
        "reins.v1.WorkerService" if method == "Connect" => Role::Worker,
        _ => Role::Admin,
    };
    Needs::Role(role)
}

fn task_method(method: &str) -> Role {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| method.starts_with(p));
    if starts(&["Check", "List", "Watch", "Get"]) {
        Role::Viewer
    } else if starts(&["Start", "Run", "Answer"]) || method.contains("Cancel") {
        Role::Operator
    } else {
        Role::Admin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rpc_needs_its_role_and_unknown_ones_need_admin() {
        let cases = [
            ("/grpc.health.v1.Health/Check", Needs::Nothing),
            ("/grpc.health.v1.Health/Watch", Needs::Nothing),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Needs::Nothing,
            ),
            ("/reins.v1.TaskService/CheckTask", Needs::Role(Role::Viewer)),
            (
                "/reins.v1.TaskService/ListActive",
                Needs::Role(Role::Viewer),
            ),
            ("/reins.v1.TaskService/WatchTask", Needs::Role(Role::Viewer)),
            (
                "/reins.v1.TaskService/StartTask",
                Needs::Role(Role::Operator),
            ),
            (
                "/reins.v1.TaskService/SoftCancel",
                Needs::Role(Role::Operator),
            ),
            (
                "/reins.v1.TaskService/HardCancel",
                Needs::Role(Role::Operator),
            ),
            (
                "/reins.v1.TaskService/AnswerTask",
                Needs::Role(Role::Operator),
            ),
            (
                "/reins.v1.TaskService/CancelTasks",
                Needs::Role(Role::Operator),
            ),
            ("/reins.v1.TaskService/RunTask", Needs::Role(Role::Operator)),
            (
                "/reins.v1.TaskService/PurgeEverything",
                Needs::Role(Role::Admin),
            ),
            ("/reins.v1.WorkerService/Connect", Needs::Role(Role::Worker)),
            ("/reins.v1.WorkerService/Other", Needs::Role(Role::Admin)),
            ("/other.Service/Method", Needs::Role(Role::Admin)),
            ("garbage", Needs::Role(Role::Admin)),
        ];
        for (path, needs) in cases {
            assert_eq!(needed_for(path), needs, "{path}");
        }
    }

    #[test]
    fn roles_include_the_ones_below_them_and_worker_stands_apart() {
        use Role::*;
        assert!(Admin.grants(Worker) && Admin.grants(Operator) && Admin.grants(Viewer));
        assert!(Operator.grants(Viewer) && !Operator.grants(Worker) && !Operator.grants(Admin));
        assert!(!Viewer.grants(Operator));
        assert!(!Worker.grants(Viewer) && Worker.grants(Worker));
    }
}
