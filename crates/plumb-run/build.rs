fn main() {
    // The tests' own small CO-RE objects (tests/bpf), built as users build
    // theirs; the tests load the .bpf.o files from OUT_DIR.
    plumb_build::build_gadgets("tests/bpf");
}
