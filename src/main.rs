fn main() {
    std::process::exit(nodegate::cli::main());
}
