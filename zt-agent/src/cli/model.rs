//! `zt-agent model record|train|eval`: live traces from the running agent,
//! and the anomaly model offline, on traces in the public datasets' format
//! (one process per `*.txt`, integer tokens).
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use zt_agent::{
    anomaly::{
        model::{self, Model},
        trace,
    },
    control::{
        self,
        protocol::{Reply, Request},
    },
};

use super::client;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Record an identity's syscalls through the running agent: one trace
    /// per thread (`<tgid>-<tid>.txt`, x86_64 syscall numbers, io_uring
    /// submissions as 1024 + opcode) into DIR when the time is up.
    Record {
        #[arg(long, value_name = "NAME")]
        identity: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How long to record.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Learn a baseline from normal traces (every *.txt under DIR, recursively).
    Train {
        #[arg(long, value_name = "DIR")]
        input: PathBuf,
        #[arg(long, value_name = "MODEL")]
        out: PathBuf,
        /// Longest n-gram the model counts.
        #[arg(long, default_value_t = model::DEFAULT_ORDER, value_parser = clap::value_parser!(u16).range(1..=16))]
        order: u16,
        /// Calls per scoring window.
        #[arg(long, default_value_t = model::DEFAULT_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
        window: u32,
        /// Calls per window of the frequency scorer.
        #[arg(long, default_value_t = model::DEFAULT_FREQUENCY_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
        frequency_window: u32,
    },
    /// Score normal and attack traces: AUC, and the detection rate at
    /// thresholds set for 1% and 5% false positives on a seeded half of the
    /// normal traces, with the rate achieved on the other half.
    Eval {
        #[arg(long, value_name = "MODEL")]
        model: PathBuf,
        #[arg(long, value_name = "DIR")]
        normal: PathBuf,
        #[arg(long, value_name = "DIR")]
        attack: PathBuf,
        /// Seed of the calibration split.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

pub fn command(c: ModelCommand) -> anyhow::Result<ExitCode> {
    match c {
        ModelCommand::Record { identity, out, duration, socket } => {
            // The agent writes the files: give it a path that means the same to it.
            let out = std::path::absolute(&out)?;
            let req = Request::Record { identity, dir: out.clone(), seconds: duration.as_secs().max(1) };
            let Reply::Recorded(s) = client(control::request(&socket, &req))? else { anyhow::bail!("unexpected reply to record") };
            println!("{}: {} traces, {} calls ({} beyond the limit, not kept)", out.display(), s.traces, s.calls, s.calls_beyond_limit);
        }
        ModelCommand::Train { input, out, order, window, frequency_window } => {
            let traces = trace::read_dir(&input)?;
            let m = Model::train(traces.iter().map(|t| t.calls.as_slice()), order.into(), window as usize, frequency_window as usize);
            m.save(&out)?;
            println!(
                "{}: {} traces, {} calls, {} n-grams (order {order}, {} distinct calls), window {window}; {} baseline call mixes of {frequency_window} calls",
                out.display(),
                m.traces,
                m.calls,
                m.ngrams.len(),
                m.ngrams.vocabulary(),
                m.frequencies.baseline_len()
            );
        }
        ModelCommand::Eval { model, normal, attack, seed, json } => {
            let m = Model::load(&model)?;
            let calls =
                |dir: &PathBuf| -> anyhow::Result<Vec<Vec<u32>>> { Ok(trace::read_dir(dir)?.into_iter().map(|t| t.calls).collect()) };
            let e = model::evaluate(&m, calls(&normal)?, &calls(&attack)?, seed);
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "normal: {} calibration + {} held out (seed {seed}); attack: {}",
                    e.normal_calibration, e.normal_held_out, e.attack
                );
                println!("scorer     AUC     DR@1%   FPR@1%  DR@5%   FPR@5%");
                let s = &e.scorers;
                for (name, r) in [("ngram", &s.ngram), ("stide", &s.stide), ("frequency", &s.frequency), ("combined", &s.combined)] {
                    println!(
                        "{name:<10} {:.3}   {:.3}   {:.3}   {:.3}   {:.3}",
                        r.auc, r.dr_at_1pct, r.fpr_at_1pct, r.dr_at_5pct, r.fpr_at_5pct
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
