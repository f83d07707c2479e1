//! `cod auth …`: `hash-password` prints a bcrypt hash for `API.Auth.Users[].Password` (as Bacalhau's
//! `auth hash-password` does), `info` lists the auth methods the node takes.

use std::io::BufRead;

use anyhow::Context as _;
use argh::FromArgs;

use super::{Context, UsageError};

/// API credentials: hash a password for the config, or ask the node how it authenticates
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "auth")]
pub struct AuthArgs {
    /// the auth command
    #[argh(subcommand)]
    pub command: AuthCommand,
}

/// The `auth` commands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum AuthCommand {
    /// `auth hash-password`
    HashPassword(HashPasswordArgs),
    /// `auth info`
    Info(InfoArgs),
}

/// read a password from stdin (one line) and print its bcrypt hash for API.Auth.Users[].Password
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "hash-password")]
pub struct HashPasswordArgs {}

/// list the auth methods the node takes (GET /api/v1/auth)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "info")]
pub struct InfoArgs {}

/// Whether `args` needs the API (only `info` does).
pub fn needs_api(args: &AuthArgs) -> bool {
    matches!(args.command, AuthCommand::Info(_))
}

/// Runs `cod auth hash-password` (no API needed).
pub fn hash_password() -> anyhow::Result<()> {
    // From stdin, not an argument: arguments show in `ps` and shell history.
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    let hash = crate::auth::password::hash(password).map_err(UsageError::new)?;
    println!("{hash}");
    Ok(())
}

/// Runs `cod auth info`.
pub async fn info(ctx: &Context) -> anyhow::Result<()> {
    let methods = ctx
        .client
        .auth_methods()
        .await
        .with_context(|| format!("asking {} for its auth methods", ctx.client.base()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&methods).unwrap_or_else(|_| methods.to_string())
    );
    Ok(())
}
