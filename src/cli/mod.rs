//! The `cod` command line: the argh command tree and its dispatcher.
//!
//! Every command except `serve` and `ipfs` (see `ipfs.rs`) is a client of a running node's HTTP API (Bacalhau's `/api/v1` shapes) and
//! never opens the store, as garage's CLI does. Results go to stdout, diagnostics to stderr. Errors are
//! `anyhow` with context naming the job, node or path; `main` prints the chain once. A failed *job* is not an
//! error of the CLI: it is reported as [`Outcome::JobFailed`], which `main` maps to its own exit code.
//!
//! argh has no global options after a subcommand, so `--api-host`/`--api-port` go before the command
//! (`cod --api-port 2345 job list`), while `--output` is accepted both there and on each command that prints
//! data (`cod job list --output json`); the command's own flag wins.

use std::fmt;

use argh::FromArgs;

pub mod agent;
pub mod auth;
pub mod client;
pub mod client_config;
pub mod docker;
pub mod docs;
// Sized for an orchestrator's fleet of connections; a compute node keeps a handful.
#[cfg(feature = "orchestrator")]
pub mod fd_limit;
pub mod input;
#[cfg(feature = "ipfs")]
pub mod ipfs;
#[cfg(feature = "ipfs")]
pub mod ipfs_net;
pub mod job;
pub mod node;
pub mod output;
pub mod publisher;
pub mod results;
pub mod security;
pub mod serve;
pub mod spec_file;
pub mod task_flags;
pub mod wait;
pub mod wasm;

use client::{ApiAddress, ApiClient};
use output::OutputFormat;

/// cod: a Bacalhau-compatible orchestrator, edge compute node and CLI in one binary.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// host of the Cod API (default: $COD_API_HOST, $BACALHAU_API_HOST, 127.0.0.1)
    #[argh(option)]
    pub api_host: Option<String>,
    /// port of the Cod API (default: $COD_API_PORT, $BACALHAU_API_PORT, 1234)
    #[argh(option)]
    pub api_port: Option<u16>,
    /// output format for commands that print data: table (default), json or yaml
    #[argh(option)]
    pub output: Option<OutputFormat>,
    /// API key to send (default: $COD_API_KEY, $BACALHAU_API_KEY, then the node's <data dir>/api-token)
    #[argh(option)]
    pub api_key: Option<String>,
    /// user name for Basic auth (with --password; env BACALHAU_API_USERNAME)
    #[argh(option)]
    pub username: Option<String>,
    /// password for Basic auth (with --username; env BACALHAU_API_PASSWORD)
    #[argh(option)]
    pub password: Option<String>,
    /// call the API over HTTPS (env COD_API_TLS, BACALHAU_API_TLS_USETLS)
    #[argh(switch)]
    pub tls: bool,
    /// trust only this PEM CA certificate for HTTPS; implies --tls (env BACALHAU_API_TLS_CACERT)
    #[argh(option)]
    pub cacert: Option<std::path::PathBuf>,
    /// do not verify the API's certificate; implies --tls (env BACALHAU_API_TLS_INSECURE)
    #[argh(switch)]
    pub insecure: bool,
    /// the command to run
    #[argh(subcommand)]
    pub command: Command,
}

/// The top-level commands.
// Parsed once at startup, so the size difference between variants costs nothing; argh cannot box them.
#[allow(clippy::large_enum_variant)]
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    /// `cod job …`
    #[cfg(feature = "client")]
    Job(job::JobArgs),
    /// `cod wasm …`
    #[cfg(feature = "client")]
    Wasm(wasm::WasmArgs),
    /// `cod docker …`
    #[cfg(feature = "client")]
    Docker(docker::DockerArgs),
    /// `cod node …`
    #[cfg(feature = "client")]
    Node(node::NodeArgs),
    /// `cod agent …`
    Agent(agent::AgentArgs),
    /// `cod version`
    Version(agent::VersionArgs),
    /// `cod serve`
    Serve(serve::ServeArgs),
    /// `cod completions SHELL`
    Completions(docs::CompletionsArgs),
    /// `cod man`
    Man(docs::ManArgs),
    /// `cod ipfs …`
    #[cfg(feature = "ipfs")]
    Ipfs(ipfs::IpfsArgs),
    /// `cod auth …`
    Auth(auth::AuthArgs),
}

/// How a command ended when it did not fail itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything worked (including a job that completed).
    Success,
    /// The command worked, but the job it waited for failed or was stopped.
    JobFailed,
}

/// A command line that parsed but makes no sense (a bad `-i` value, conflicting flags, a malformed
/// `COD_API_PORT`). `main` maps it to exit code 64 (EX_USAGE), like argh's own parse errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    /// A usage error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

impl Cli {
    /// Parses the words after the program name. A lone `-` (standard input, as in `cod ipfs add -Q -`) is an
    /// operand, but argh takes every word that starts with `-` for a flag; as the last word, and with no `--`
    /// before it, it gets one, which is what argh needs to read it as an operand.
    pub fn parse(args: &[&str]) -> Result<Cli, argh::EarlyExit> {
        let parsed = match args.split_last() {
            Some((&"-", rest)) if !rest.contains(&"--") => {
                let mut words = rest.to_vec();
                words.extend(["--", "-"]);
                Cli::from_args(&["cod"], &words)
            }
            _ => Cli::from_args(&["cod"], args),
        };
        #[cfg(not(feature = "client"))]
        let parsed = parsed.map_err(explain_missing_client_verb);
        parsed
    }

    /// True for `cod serve`, which runs the node (multi-threaded runtime, info-level logs) instead of calling
    /// one.
    pub fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

/// The verbs of the `client` feature, which edge builds leave out.
#[cfg(not(feature = "client"))]
const CLIENT_VERBS: [&str; 4] = ["job", "node", "wasm", "docker"];

/// argh answers `cod job …` in a build without the client verbs with a bare "Unrecognized argument: job";
/// an operator on a board deserves to know the verb exists and where to run it.
#[cfg(not(feature = "client"))]
fn explain_missing_client_verb(mut early: argh::EarlyExit) -> argh::EarlyExit {
    let unknown = early.output.trim().strip_prefix("Unrecognized argument: ");
    if let Some(verb) = unknown.filter(|w| CLIENT_VERBS.contains(w)) {
        early.output = format!(
            "`cod {verb}` is not in this build: edge builds (compute only) leave out the client verbs {}. \
             Run them from a full build of cod on any machine that reaches the orchestrator's API \
             (--api-host/--api-port), or call the API (/api/v1/orchestrator/...) directly.",
            CLIENT_VERBS.join(", ")
        );
    }
    early
}

/// What every client command gets: the API client and the output format chosen at the top level.
#[derive(Debug)]
pub struct Context {
    /// The API of the node the command talks to.
    pub client: ApiClient,
    /// `--output` given before the command; a command's own `--output` overrides it.
    pub output: Option<OutputFormat>,
}

impl Context {
    /// The output format for a command whose own `--output` is `own`.
    pub fn format(&self, own: Option<OutputFormat>) -> OutputFormat {
        own.or(self.output).unwrap_or_default()
    }
}

/// A parsed command line with what must be known before the runtime starts: `serve`'s configuration,
/// which decides how many threads the runtime gets.
#[derive(Debug)]
pub enum Prepared {
    /// `cod serve`, its configuration loaded and valid.
    Serve(Box<serve::Loaded>),
    /// Any other command: one request at a time.
    Client(Box<Cli>),
}

/// The async runtime a command wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One thread: client commands, which start fastest that way.
    CurrentThread,
    /// `serve`: worker threads (`None`: one per core), plus the blocking pool.
    MultiThread {
        /// Async worker threads.
        workers: Option<usize>,
    },
}

impl Cli {
    /// Loads `serve`'s configuration (a bad one is a [`UsageError`]); other commands pass through.
    pub fn prepare(self) -> anyhow::Result<Prepared> {
        match self {
            Cli {
                command: Command::Serve(args),
                ..
            } => Ok(Prepared::Serve(Box::new(serve::load(args)?))),
            cli => Ok(Prepared::Client(Box::new(cli))),
        }
    }
}

impl Prepared {
    /// The runtime to build for [`Prepared::run`].
    pub fn runtime(&self) -> Runtime {
        match self {
            Prepared::Serve(loaded) => Runtime::MultiThread {
                workers: loaded.async_workers(),
            },
            Prepared::Client(_) => Runtime::CurrentThread,
        }
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Outcome> {
        match self {
            Prepared::Serve(loaded) => serve::run(*loaded).await.map(|()| Outcome::Success),
            Prepared::Client(cli) => run(*cli).await,
        }
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let Cli {
        api_host,
        api_port,
        output,
        api_key,
        username,
        password,
        tls,
        cacert,
        insecure,
        command,
    } = cli;
    let flags = security::SecurityFlags {
        api_key,
        username,
        password,
        tls,
        cacert,
        insecure,
    };
    // Built only for client commands: `serve` must not fail on a malformed `COD_API_PORT` meant for clients.
    let context = || -> anyhow::Result<Context> {
        let process_env = |name: &str| std::env::var(name).ok();
        // The client config file stands in for variables that are not set (see client_config).
        let (file, named) = client_config::path(process_env);
        let file = client_config::load(&file, named)?;
        let env = |name: &str| {
            process_env(name)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| file.get(name).cloned())
        };
        let address = ApiAddress::resolve(api_host.as_deref(), api_port, env)?;
        // Where the node on this machine keeps its api-token and self-signed certificate.
        let data_dir = env("COD_DATA_DIR")
            .filter(|d| !d.trim().is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(crate::config::default_data_dir);
        let security = security::ClientSecurity::resolve(&flags, env, &data_dir)?;
        Ok(Context {
            client: ApiClient::with_security(&address, &security)?,
            output,
        })
    };
    match command {
        Command::Serve(args) => serve::run(serve::load(args)?)
            .await
            .map(|()| Outcome::Success),
        #[cfg(feature = "client")]
        Command::Job(args) => job::run(&context()?, args).await,
        #[cfg(feature = "client")]
        Command::Wasm(args) => wasm::run(&context()?, args).await,
        #[cfg(feature = "client")]
        Command::Docker(args) => docker::run(&context()?, args).await,
        #[cfg(feature = "client")]
        Command::Node(args) => node::run(&context()?, args)
            .await
            .map(|()| Outcome::Success),
        Command::Agent(args) => agent::run(&context()?, args)
            .await
            .map(|()| Outcome::Success),
        Command::Version(args) => agent::version(&context()?, args)
            .await
            .map(|()| Outcome::Success),
        Command::Completions(args) => docs::completions(args).map(|()| Outcome::Success),
        Command::Man(args) => docs::man(args).map(|()| Outcome::Success),
        #[cfg(feature = "ipfs")]
        Command::Ipfs(args) => ipfs::run(args).await.map(|()| Outcome::Success),
        Command::Auth(args) if auth::needs_api(&args) => {
            auth::info(&context()?).await.map(|()| Outcome::Success)
        }
        Command::Auth(_) => auth::hash_password().map(|()| Outcome::Success),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, argh::EarlyExit> {
        Cli::parse(args)
    }

    #[cfg(feature = "ipfs")]
    #[test]
    fn a_lone_dash_is_standard_input() {
        for args in [
            &["ipfs", "add", "-Q", "-"][..],
            &["ipfs", "add", "-Q", "--", "-"],
        ] {
            let Command::Ipfs(ipfs) = parse(args).expect("parses").command else {
                panic!("not an ipfs command: {args:?}");
            };
            let ipfs::IpfsCommand::Add(add) = ipfs.command else {
                panic!("not ipfs add: {args:?}");
            };
            assert_eq!(add.path, std::path::Path::new("-"));
            assert!(add.quieter, "{args:?}");
        }
    }

    #[test]
    fn parses_global_options_before_the_command() {
        let cli =
            parse(&["--api-port", "2345", "--output", "json", "agent", "node"]).expect("parses");
        assert_eq!(cli.api_port, Some(2345));
        assert_eq!(cli.output, Some(OutputFormat::Json));
        assert!(matches!(cli.command, Command::Agent(_)));
        assert!(!cli.is_serve());
    }

    #[test]
    fn serve_is_recognised() {
        assert!(parse(&["serve"]).expect("parses").is_serve());
    }

    #[test]
    fn command_output_flag_overrides_the_global_one() {
        let ctx = Context {
            client: ApiClient::new(&ApiAddress::resolve(None, None, |_| None).expect("default"))
                .expect("client"),
            output: Some(OutputFormat::Yaml),
        };
        assert_eq!(ctx.format(Some(OutputFormat::Json)), OutputFormat::Json);
        assert_eq!(ctx.format(None), OutputFormat::Yaml);
    }

    #[cfg(not(feature = "client"))]
    #[test]
    fn a_client_verb_left_out_of_this_build_says_where_to_run_it() {
        for (args, verb) in [
            (&["--api-port", "2345", "job", "list"][..], "job"),
            (&["wasm", "run", "m.wasm"], "wasm"),
            (&["node", "list"], "node"),
            (&["docker", "run", "busybox"], "docker"),
        ] {
            let err = parse(args).expect_err("not in this build");
            assert!(err.status.is_err(), "{args:?}");
            assert!(
                err.output
                    .contains(&format!("`cod {verb}` is not in this build"))
                    && err.output.contains("full build")
                    && !err.output.contains('\\'),
                "{args:?}: {}",
                err.output
            );
        }
        // Other unknown words keep argh's answer.
        let err = parse(&["frob"]).expect_err("unknown");
        assert_eq!(err.output.trim(), "Unrecognized argument: frob");
    }

    #[test]
    fn rejects_unknown_output_format() {
        assert!(parse(&["--output", "xml", "version"]).is_err());
    }
}
