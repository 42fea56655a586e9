fn main() {
    plumb_build::build_gadgets("src/bpf");
}
