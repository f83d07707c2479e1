//! Logging: one tracing subscriber to stderr (results go to stdout), and a panic hook.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Logs go to stderr at `default` level unless `COD_LOG` (or `RUST_LOG`) says otherwise. A panic is logged
/// with the version before the process dies (release builds abort on panic: a half-dead node whose tasks
/// panicked is worse than a restart by systemd).
///
/// The filter is a list of `level` and `target=level` items (`info,cod::compute=debug`), parsed by
/// `Targets` rather than `EnvFilter`: EnvFilter's span and field directives need a regex engine, which cost
/// ~0.2 MiB of a binary whose budget is 8 MiB, for a syntax no one used. A filter that does not parse is
/// reported and the default used.
pub fn init(default: &str) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(version = env!("CARGO_PKG_VERSION"), "panic: {info}");
        default_hook(info);
    }));
    let given = std::env::var("COD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    let (filter, invalid) = match given.as_deref().map(str::parse::<Targets>) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (default_targets(default), Some(e)),
        None => (default_targets(default), None),
    };
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
    if let (Some(e), Some(given)) = (invalid, given) {
        tracing::warn!(filter = %given, "COD_LOG is not a list of level and target=level items ({e}); using {default}");
    }
}

fn default_targets(default: &str) -> Targets {
    default
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
}
