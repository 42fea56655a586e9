fn main() {
    let proto = "../../proto/cri/lifecycle_v1.proto";
    println!("cargo:rerun-if-changed={proto}");
    // Only the client: the runtime on the other end is containerd.
    if let Err(e) = tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto], &["../../proto/cri"])
    {
        panic!("compiling {proto}: {e}");
    }
}
