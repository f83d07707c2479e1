//! Logging: one tracing subscriber to stderr (results go to stdout), and a panic hook.

use tracing_subscriber::EnvFilter;

/// Logs go to stderr at `default` level unless `COD_LOG` (or `RUST_LOG`) says otherwise. A panic is logged
/// with the version before the process dies (release builds abort on panic: a half-dead node whose tasks
/// panicked is worse than a restart by systemd).
pub fn init(default: &str) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(version = env!("CARGO_PKG_VERSION"), "panic: {info}");
        default_hook(info);
    }));
    let filter = EnvFilter::try_from_env("COD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
