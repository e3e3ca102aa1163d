fn main() -> std::process::ExitCode {
    leap_edge::cli::main()
}
