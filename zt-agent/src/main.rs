//! The `zt-agent` binary: CLI parsing and dispatch; the subcommands are in
//! [`cli`], the work in the library.
mod cli;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use zt_agent::control;

#[derive(Parser)]
#[command(name = "zt-agent", version, about = "Zero-trust host enforcement agent for AI-agent workloads (eBPF)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs, enforce the host policy, stream attributed events (foreground).
    Run(Box<cli::run::RunArgs>),
    /// Report which eBPF features really work on this kernel (loads tiny programs).
    Probe {
        #[arg(long)]
        json: bool,
    },
    /// Counters, hooks and enforcement paths of the running agent.
    Status {
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify the running agent now: its cgroup programs still attached with
    /// the ids it loaded (attached again if not), its binary unchanged. Exit
    /// status 1 on a finding or a repair.
    Verify {
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Config file tools.
    Config {
        #[command(subcommand)]
        command: cli::config::ConfigCommand,
    },
    /// Policy file tools.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// The signed audit log: verify, prove, read, rotate keys.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// The syscall anomaly model: record live traces, train, evaluate.
    Model {
        #[command(subcommand)]
        command: cli::model::ModelCommand,
    },
    /// Quarantine an identity (its egress deny-all, kept across restarts)
    /// or release it, through the running agent.
    Identity {
        #[command(subcommand)]
        command: cli::status::IdentityCommand,
    },
    /// Remove the pinned programs and state (enforcement ends): what a stop
    /// leaves in place on purpose. Stop the agent first.
    Uninstall {
        /// The pin directory the agent ran with.
        #[arg(long, value_name = "DIR", default_value = zt_agent::bpf::pins::DEFAULT_DIR)]
        pin_dir: PathBuf,
    },
}

/// Log lines to stderr, `RUST_LOG` filtering (default `info`). `run`
/// calls it once its options are known (`--log-format`, `logFormat`);
/// every other command logs text.
pub fn init_logging(format: zt_agent::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        zt_agent::config::LogFormat::Text => builder.init(),
        zt_agent::config::LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // The matches say which options were given (a config file fills the rest).
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Run(_)) {
        init_logging(zt_agent::config::LogFormat::Text);
    }
    let result = match cli.command {
        Command::Run(args) => cli::run::run(*args, matches.subcommand_matches("run").expect("the run subcommand")),
        Command::Config { command } => cli::config::command(command),
        Command::Probe { json } => cli::status::probe(json),
        Command::Status { socket, json } => cli::status::status(&socket, json),
        Command::Verify { socket, json } => cli::status::verify(&socket, json),
        Command::Policy { command } => cli::policy::command(command),
        Command::Audit { command } => cli::audit::command(command),
        Command::Model { command } => cli::model::command(command),
        Command::Identity { command } => cli::status::identity(command),
        Command::Uninstall { pin_dir } => cli::run::uninstall(&pin_dir),
    };
    result.unwrap_or_else(|e| {
        eprintln!("zt-agent: error: {e:#}");
        ExitCode::from(2)
    })
}
