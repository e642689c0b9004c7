//! `harness`: the command-line entry point. Parses arguments and calls the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "harness", version, about = "ddm-sft: diffusion vs autoregressive SFT on medical QA")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train one run into a run folder.
    Train {
        /// Run configuration (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Override a config value: `--set train.lr=1e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run folder (default: `<out_dir>/<name>-<utc stamp>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // A second Ctrl-C kills the process the usual way.
    let _ = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after the current step (Ctrl-C again to kill)");
    });
    stop
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train { config, sets, out } => {
            let raw = harness::config::RawConfig::load(&config, &sets)?;
            let dir = match out {
                Some(d) => d,
                None => harness::run::new_run_dir(&raw.out_dir, &raw.name)?,
            };
            let stop = stop_flag();
            let t = harness::run::train_run(raw, &dir, harness::run::RunOpts { stop: Some(&stop), hook: None })?;
            let s = &t.summary.train;
            println!(
                "run folder: {}\nsteps {}  first loss {:.4}  final loss {:.4}  {:.0} tokens/s  {:.1} s",
                dir.display(),
                s.steps,
                s.first_loss,
                s.final_loss,
                s.tokens_per_s,
                s.wall_s
            );
            Ok(())
        }
    }
}
