fn main() {
    plumb_build::build_gadgets("src/gadgets");
    // The enricher's watcher of new cgroups.
    plumb_build::build_gadgets("src/enrich/bpf");
    // Objects only tests load (a program the verifier refuses).
    plumb_build::build_gadgets("src/testdata");
}
