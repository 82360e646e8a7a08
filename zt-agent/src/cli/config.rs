//! `zt-agent config check FILE`.
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use zt_agent::config::{self, ConfigError};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a config file: every error as file:line:column (exit 1).
    Check {
        #[arg(value_name = "FILE", default_value = config::DEFAULT_PATH)]
        file: PathBuf,
    },
}

pub fn command(c: ConfigCommand) -> anyhow::Result<ExitCode> {
    match c {
        ConfigCommand::Check { file } => match config::load(&file) {
            Ok(l) => {
                println!("{}: ok ({} SIEM destinations)", file.display(), l.syslog.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(ConfigError::Invalid(lines)) => {
                for l in lines {
                    eprintln!("{l}");
                }
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
    }
}
