//! Generates the prost messages, the tonic service code, the pbjson serde
//! impls (canonical protobuf JSON) and a file descriptor set for reflection.
//! protoc comes from the `protoc-bin-vendored` crate unless `PROTOC` is set.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "lianxi/v1/personal.proto",
        "lianxi/v1/events.proto",
        "lianxi/v1/view.proto",
        "lianxi/v1/cases.proto",
        "lianxi/v1/receipts.proto",
        "lianxi/v1/audit.proto",
    ]
    .map(|f| root.join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = out.join("lianxi_descriptor.bin");

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_with_config(config, &files, &[root])?;

    let set = std::fs::read(&descriptor)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .extern_path(".google.protobuf", "::pbjson_types")
        .build(&[".lianxi"])?;
    Ok(())
}
