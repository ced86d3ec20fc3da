//! Generated bindings for the `lianxi.v1` protobuf package.
//!
//! Every JSON the project reads or prints is canonical protobuf JSON through
//! the pbjson serde impls generated here.

#![forbid(unsafe_code)]

/// The `lianxi.v1` package: events, views, stored records and the services.
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/lianxi.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/lianxi.v1.serde.rs"));
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lianxi_descriptor.bin"));

pub use pbjson_types::Timestamp;
pub use prost::Message;
