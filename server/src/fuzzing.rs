//! Entry points for the fuzz targets in `tests/fuzz` (compiled only with the `fuzzing`
//! feature): every parser of untrusted input, fed arbitrary bytes. Each function must
//! return for any input — refusing it is fine, panicking is a bug.

use prost::Message;
use reins_proto::json::{json_to_struct, struct_to_json, value_to_json};
use reins_proto::v1 as pb;

use clap::Parser;

use crate::api::request;
use crate::config::Config;
use crate::executor::Kinds;
use crate::task::JsonMap;

/// The configuration of a server started with `--allow-exec sh` and default limits.
fn config() -> Config {
    Config::parse_from(["reinsd", "--allow-exec", "sh"])
}

/// The built-in kinds as such a server has them.
fn kinds() -> Kinds {
    Kinds::builtin(config().exec_policy())
}

/// A StartTaskRequest from the wire, validated as the api does, then its params checked by
/// the kind it names (and by `sleep` and `exec`, whatever it names).
pub fn start_request(bytes: &[u8]) {
    let Ok(request) = pb::StartTaskRequest::decode(bytes) else {
        return;
    };
    let Ok(spec) = request::new_task(request, &config().limits) else {
        return;
    };
    let kinds = kinds();
    for kind in [spec.kind.as_str(), "sleep", "exec"] {
        if let Ok(kind) = kinds.get(kind) {
            let _ = kind.prepare(&spec.params);
        }
    }
    // What was accepted survives the round trip to the wire and back.
    let back = struct_to_json(&json_to_struct(&spec.params)).expect("accepted params are finite");
    assert_eq!(back, spec.params);
}

/// Params as JSON, checked by each built-in kind.
pub fn params(bytes: &[u8]) {
    let Ok(params) = serde_json::from_slice::<JsonMap>(bytes) else {
        return;
    };
    let kinds = kinds();
    for kind in ["sleep", "exec"] {
        let _ = kinds.get(kind).expect("built in").prepare(&params);
    }
}

/// A ListActiveRequest from the wire, page token included.
pub fn list_request(bytes: &[u8]) {
    if let Ok(request) = pb::ListActiveRequest::decode(bytes) {
        let _ = request::list_query(&request, Some("tenant".to_owned()));
    }
}

/// A page token as a client may send it; a token we accept is one we could have issued.
pub fn page_token(bytes: &[u8]) {
    let Ok(token) = std::str::from_utf8(bytes) else {
        return;
    };
    let filter = crate::store::ActiveFilter::default();
    if let Ok(Some(after)) = request::decode_page_token(token, &filter) {
        assert_eq!(
            request::decode_page_token(&request::encode_page_token(after, &filter), &filter).ok(),
            Some(Some(after))
        );
    }
}

/// The cancel requests and their durations from the wire.
pub fn cancel_request(bytes: &[u8]) {
    if let Ok(request) = pb::SoftCancelRequest::decode(bytes) {
        let _ = request::task_id("task_id", &request.task_id);
        let _ = request::duration("grace_period", request.grace_period);
    }
}

/// A worker's message from the wire: the values it carries become JSON as the worker
/// service converts them.
pub fn worker_message(bytes: &[u8]) {
    let Ok(message) = pb::WorkerMessage::decode(bytes) else {
        return;
    };
    use pb::worker_message::Message as M;
    let value = match message.message {
        Some(M::Progress(progress)) => progress.partial_result,
        Some(M::Complete(complete)) => complete.result,
        Some(M::CancelAck(ack)) => ack.result,
        _ => None,
    };
    if let Some(value) = value {
        let _ = value_to_json(&value);
    }
}
