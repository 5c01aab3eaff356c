//! Compiles the API's .proto files with protox, a protobuf compiler in Rust, so building Trellis
//! needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let file = proto_dir.join("trellis/v1/trellis.proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let descriptors = protox::compile([&file], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // `bytes` fields as `bytes::Bytes`: an event's data is then shared, not copied, between
        // the producer's resend queue and each request built from it, and the server decodes it
        // as a slice of the received message.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
