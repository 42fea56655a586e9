fn main() {
    let proto = "../../proto/cri/runtime_v1.proto";
    println!("cargo:rerun-if-changed={proto}");
    // The server side is generated too: the tests stand in for a runtime.
    if let Err(e) = tonic_prost_build::configure().compile_protos(&[proto], &["../../proto/cri"]) {
        panic!("compiling {proto}: {e}");
    }
}
