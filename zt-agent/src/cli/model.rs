//! `zt-agent model train|eval`: the anomaly model offline, on traces in
//! the public datasets' format (one process per `*.txt`, integer tokens).
use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use zt_agent::anomaly::{
    model::{self, Model},
    trace,
};

#[derive(Subcommand)]
pub enum ModelCommand {
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
