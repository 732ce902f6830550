//! Compiles `reins/v1/*.proto` with protox (pure Rust, no system `protoc`), generates the
//! prost/tonic code from the resulting descriptors and keeps the encoded descriptor set
//! for server reflection.
//!
//! The code is generated in two passes. The first makes the messages and the clients. The
//! second makes only the servers, over the first pass's types (`extern_path`), except that
//! a server's stream of `TaskEvent` (WatchTask, RunTask) is one of
//! [`encoded::EncodedTaskEvent`](src/encoded.rs): the same bytes on the wire, with the task
//! encoded once and shared by all its watchers. The servers use
//! [`codec::ServerCodec`](src/codec.rs) (smaller send buffers).

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["reins/v1/tasks.proto", "reins/v1/workers.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("reins_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // No generated `connect` constructors: WorkerService's `Connect` RPC would collide with
    // them, and clients build their channels themselves.
    tonic_prost_build::configure()
        .build_transport(false)
        .build_server(false)
        .compile_fds(descriptors.clone())?;
    let servers = out_dir.join("servers");
    fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(servers)
        .codec_path("crate::codec::ServerCodec")
        .extern_path(".reins.v1.TaskEvent", "crate::encoded::EncodedTaskEvent")
        .extern_path(".reins.v1", "crate::v1")
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=reins");
    Ok(())
}
