//! The `weir` daemon and command line; everything else lives in the library.

/// mimalloc: events are allocated on one thread and freed on another, the case where the
/// system allocator spends the most time (a fifth of the daemon's CPU under HTTP load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
