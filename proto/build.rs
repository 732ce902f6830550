//! Compiles `reins/v1/*.proto` with protox (pure Rust, no system `protoc`), generates the
//! prost/tonic code from the resulting descriptors and keeps the encoded descriptor set
//! for server reflection.

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
        .compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=reins");
    Ok(())
}
