fn main() {
    let proto = "../../proto/plumb/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    if let Err(e) = tonic_prost_build::configure().compile_protos(&[proto], &["../../proto"]) {
        panic!("compiling {proto}: {e}");
    }
    plumb_build::build_gadgets("src/bpf");
}
