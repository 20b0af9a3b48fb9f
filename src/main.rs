fn main() {
    std::process::exit(imagefs::cli::main());
}
