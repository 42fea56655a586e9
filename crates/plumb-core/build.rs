fn main() {
    plumb_build::build_gadgets("src/gadgets");
    // Objects only tests load (a program the verifier refuses).
    plumb_build::build_gadgets("src/testdata");
}
