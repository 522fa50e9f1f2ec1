//! The `upload` binary: everything lives in the library; `cli` parses, runs and prints.

fn main() -> std::process::ExitCode {
    upload::cli::main()
}
