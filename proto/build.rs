//! Compiles `proto/arroyod.proto` with protox, a pure-Rust protobuf compiler, so the build
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/arroyod.proto");
    let fds = protox::compile(["arroyod.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
