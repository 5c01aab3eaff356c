//! Compiles etcd's .proto files with protox, a protobuf compiler in Rust, so building Trellis
//! needs no `protoc` on the machine (the etcd-client crate's build script does).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let file = proto_dir.join("etcd/api/etcdserverpb/rpc.proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let descriptors = protox::compile([&file], [&proto_dir])?;
    tonic_prost_build::configure()
        // Trellis only talks to etcd.
        .build_server(false)
        .build_client(true)
        // Keys and values as `bytes::Bytes`: a stored value is handed on without a copy.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
