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
        /// Data-parallel training over N GPUs of this host (one process each, NCCL; see
        /// `harness::train::dist`). torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK,
        /// MASTER_ADDR, MASTER_PORT) do the same under another launcher.
        #[arg(long, default_value_t = 1)]
        nproc: usize,
    },
    /// Export a finished run as a Hugging Face folder (config.json, safetensors, tokenizer, model
    /// card) that transformers loads.
    Export {
        /// The run folder (with DONE).
        run_dir: PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Merge the LoRA adapters into the weights (default: base weights + the peft adapter).
        #[arg(long)]
        merge: bool,
    },
    /// Pinned cross-check on the chosen device (f32 and bf16) against PyTorch pins and the CPU.
    Selfcheck {
        /// `auto`, `cpu` or `cuda:N`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Also write the checks as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Training and decoding throughput at the SmolLM2-135M shape (or another `--arch`); writes
    /// JSON lines into --out.
    Bench {
        /// Output folder (default `results/bench/<stamp>-<sha>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `auto`, `cpu` or `cuda:N`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Tiny sizes (a CPU smoke test of the benchmark itself).
        #[arg(long)]
        quick: bool,
        /// Timed steps per configuration (default 10; 3 at smollm2-1.7b and llama2-7b).
        #[arg(long)]
        steps: Option<usize>,
        /// Peak dense bf16 TFLOP/s for MFU (default: known from the GPU name).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Skip the decoding benchmark.
        #[arg(long)]
        no_decode: bool,
        /// Instead: profile training steps with CUPTI (profile.jsonl: device time per kernel, host
        /// time per driver call, copies, device busy vs wall) and time the individual tensor
        /// operations of a step at batch 64 × 512 (ops.jsonl).
        #[arg(long)]
        ops: bool,
        /// Only these training rows, `objective:rank:batch:seq` (rank 0 = full fine-tuning),
        /// comma-separated, e.g. `ddm:16:64:512,ddm:0:64:512`; `pack` for the packed-vs-padded rows (packing.jsonl).
        /// At smollm2-1.7b and llama2-7b the rows named run instead of the batch search (e.g.
        /// `ddm:16:8:1024`), and `decode` adds the decoding rows.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// How training steps are launched, comma-separated: `eager`, `cuda_graph`, `auto`
        /// (default: each one this device can run, eager and cuda_graph on CUDA; eager only at
        /// smollm2-1.7b and llama2-7b).
        #[arg(long, value_delimiter = ',')]
        launch: Vec<String>,
        /// Model shape: `smollm2-135m` (the grid above), `smollm2-1.7b` or `llama2-7b` (ddm, LoRA
        /// 16, seq 1024 at batch 1, 2, 4, … until a step fails, 2 warm-up steps; packing and
        /// decoding only when --only names `pack` or `decode`). --quick keeps the tiny shape.
        #[arg(long, default_value = "smollm2-135m")]
        arch: String,
        /// The largest batch the search of smollm2-1.7b and llama2-7b tries.
        #[arg(long, default_value_t = 64)]
        max_batch: usize,
    },
    /// Render a bench folder (candle.jsonl, torch.jsonl, decode.jsonl, torch_decode.jsonl) as two tables
    /// with ratios (training, decoding), printed and written to table.md.
    BenchTable {
        /// The bench folder.
        dir: PathBuf,
    },
    /// Evaluate a finished run folder, or a base model on a dataset.
    Eval {
        /// A run folder made by `harness train` or a study.
        #[arg(long, conflicts_with_all = ["base", "dataset"])]
        run: Option<PathBuf>,
        /// A base model: a .gguf, a HF folder or a hub repo id (default: the embedded SmolLM2).
        #[arg(long)]
        base: Option<String>,
        /// Dataset spec, e.g. `clinical-rules:n_test=50`, `pubmedqa:../shared/data/pubmedqa`.
        #[arg(long)]
        dataset: Option<String>,
        /// `generate` or `likelihood` (repeatable; default generate).
        #[arg(long = "method")]
        methods: Vec<harness::config::EvalMethod>,
        /// How a base model is read: `autoregressive` / `ar` (default) or `diffusion` / `ddm`.
        #[arg(long, default_value = "autoregressive", value_parser = parse_objective)]
        objective: harness::config::ObjectiveKind,
        /// Evaluate at most N test items.
        #[arg(long)]
        limit: Option<usize>,
        /// Config overrides for a base evaluation (`--set eval.max_new_tokens=4`,
        /// `--set data.max_len=1400`: applied on top of the dataset spec). With `--run`, only `eval.*` keys
        /// (e.g. `--set eval.attention="full"`): the folder's training and data config is used as written.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output folder (default: `<run>/evals/<stamp>` or `runs/eval-<stamp>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a study (`studies/NAME.toml` or a path) into `results/<study>/<stamp>-<sha>/`;
    /// resumes its newest unfinished folder at the same commit.
    Study {
        /// Study name (`studies/NAME.toml`) or path to a study TOML.
        name: String,
        /// Override a base config value: `--set train.max_steps=10` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Results root.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Validate the study and list its runs; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// When another process is running this study, wait for it to finish (then resume,
        /// redoing nothing it finished) instead of refusing.
        #[arg(long)]
        wait: bool,
        /// Run the points in worker processes, one per entry, each taking the next unstarted
        /// run under its lock: `all` (one per visible GPU), GPU indices (`0,1,3`; repeats
        /// share a GPU: `0,0`) or `cpu` workers (`cpu,cpu`). Default: the study file's
        /// `devices`, else this process.
        #[arg(long, value_name = "LIST")]
        devices: Option<String>,
        /// Run only shard I of N of the points (point k is shard k mod N + 1), sharing the
        /// study folder with the other shards (processes or hosts, e.g. a Slurm job array:
        /// scripts/slurm/study.sbatch); `--merge` ends the folder once all are done.
        #[arg(long, value_name = "I/N", conflicts_with = "merge")]
        shard: Option<String>,
        /// Write the summary and end the study folder once every point is finished (after
        /// `--shard` runs); an error naming the unfinished runs otherwise.
        #[arg(long)]
        merge: bool,
    },
    /// One worker of `harness study --devices` (started by it): runs the unfinished points of
    /// a study folder under their run locks.
    #[command(hide = true)]
    StudyWorker {
        /// The study folder.
        folder: PathBuf,
        /// Checkpoint root of the folder (runs go to `<checkpoints>/<run id>`).
        #[arg(long)]
        checkpoints: PathBuf,
        /// `cpu` or the GPU index (informational: the GPU is chosen by CUDA_VISIBLE_DEVICES).
        #[arg(long)]
        device: String,
        /// Worker number, for messages.
        #[arg(long, default_value_t = 0)]
        worker: usize,
        /// Only this shard's points (`I/N`).
        #[arg(long)]
        shard: Option<String>,
    },
    /// Print a study's tables and write them to `report.md` (PATH: a result folder, or
    /// `results/<study>` for its latest complete folder); for a run or evaluation folder (one
    /// holding `eval.json`), print its evaluation, decoding and frontier tables.
    Report {
        /// Result folder or study results directory.
        path: PathBuf,
    },
    /// Set two study result folders side by side.
    Compare {
        /// First folder (or `results/<study>`).
        a: PathBuf,
        /// Second folder (or `results/<study>`).
        b: PathBuf,
    },
}

/// Set to `1` to print an error's full debug form with its backtraces (for internal bugs).
const BACKTRACE_VAR: &str = "DDM_BACKTRACE";

fn main() -> ExitCode {
    let debug = std::env::var_os(BACKTRACE_VAR).is_some_and(|v| v == "1");
    // Error backtraces (candle's, anyhow's) follow RUST_LIB_BACKTRACE before RUST_BACKTRACE; panics
    // follow RUST_BACKTRACE alone. Set before anything runs (one thread, nothing captured yet), so a
    // user error captures and prints no backtrace unless DDM_BACKTRACE=1 asks for one.
    std::env::set_var("RUST_LIB_BACKTRACE", if debug { "1" } else { "0" });
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if debug => {
            eprintln!("error: {e:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", user_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The message of `e` for the terminal: each context layer, down to the first library error,
/// whose `Display` already holds its source's text (so an OS message is printed once).
fn user_message(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<harness::Error>() || cause.is::<ddm_schema::Error>() {
            break;
        }
    }
    parts.join(": ")
}

fn stop_flag(second_kills: bool) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // A second Ctrl-C kills the process the usual way (not a study worker's, which may get the
    // terminal's Ctrl-C and its study's forwarded one: it stops once, cleanly).
    let _ = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            if second_kills {
                std::process::exit(130);
            }
            return;
        }
        eprintln!("\nstopping after the current step{}", if second_kills { " (Ctrl-C again to kill)" } else { "" });
    });
    stop
}

/// `--objective`: the config spelling or its short name.
fn parse_objective(s: &str) -> std::result::Result<harness::config::ObjectiveKind, String> {
    match s {
        "autoregressive" | "ar" => Ok(harness::config::ObjectiveKind::Autoregressive),
        "diffusion" | "ddm" => Ok(harness::config::ObjectiveKind::Diffusion),
        o => Err(format!("must be autoregressive (ar) or diffusion (ddm), not `{o}`")),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train { config, sets, out, nproc } => {
            let (rank, world, _) = harness::train::dist::Dist::place()?;
            if nproc > 1 {
                if world > 1 {
                    anyhow::bail!("--nproc {nproc} in a process that is already rank {rank} of {world} (RANK / WORLD_SIZE are set)");
                }
                // the config is checked once, before any rank starts
                let raw = harness::config::RawConfig::load(&config, &sets)?;
                let dir = match out {
                    Some(d) => d,
                    None => harness::run::new_run_dir(&raw.out_dir, &raw.name)?,
                };
                let mut args = vec!["train".to_string(), "--config".to_string(), config.display().to_string()];
                for s in &sets {
                    args.extend(["--set".to_string(), s.clone()]);
                }
                harness::train::dist::launch(nproc, &args, &dir)?;
                return Ok(());
            }
            if rank > 0 && out.is_none() {
                anyhow::bail!("rank {rank} of a data-parallel run needs --out: the run folder rank 0 writes");
            }
            let (out, sets) = match out {
                Some(d) => {
                    let (dir, extra) = harness::train::dist::rank_folder(rank, &d);
                    (Some(dir), sets.into_iter().chain(extra).collect())
                }
                None => (None, sets),
            };
            let raw = harness::config::RawConfig::load(&config, &sets)?;
            let dir = match out {
                Some(d) => d,
                None => harness::run::new_run_dir(&raw.out_dir, &raw.name)?,
            };
            let stop = stop_flag(true);
            // train, evaluate on the test split when eval.at_end, write DONE last
            let rec = harness::run::execute(raw, &dir, harness::run::RunOpts { stop: Some(&stop), hook: None })?;
            let s = &rec.summary.train;
            println!(
                "run folder: {}\nsteps {}  first loss {:.4}  final loss {:.4}  {:.0} tokens/s  {:.1} s",
                dir.display(),
                s.steps,
                s.first_loss,
                s.final_loss,
                s.tokens_per_s,
                s.wall_s
            );
            for m in rec.eval.iter().flat_map(|e| &e.methods) {
                let (a, f) = (&m.report.accuracy, &m.report.macro_f1);
                println!(
                    "{}: accuracy {:.1}% [{:.1}, {:.1}]  macro-F1 {:.1}%  ({} items)",
                    m.method,
                    100.0 * a.estimate,
                    100.0 * a.lo,
                    100.0 * a.hi,
                    100.0 * f.estimate,
                    m.report.n
                );
            }
            Ok(())
        }
        Cmd::Selfcheck { device, out } => {
            let dev = harness::config::device(&harness::config::resolve_device(&device)?)?;
            let checks = harness::selfcheck::run(&dev)?;
            println!("{}", harness::report::selfcheck_table(&checks));
            if let Some(out) = out {
                harness::run::write_json(&out, &checks)?;
            }
            let bad = checks.iter().filter(|c| !c.ok).count();
            if bad > 0 {
                anyhow::bail!("{bad} of {} checks out of tolerance", checks.len());
            }
            println!("selfcheck passed: {} checks", checks.len());
            Ok(())
        }
        Cmd::Bench { out, device, quick, steps, peak_tflops, no_decode, ops, only, launch, arch, max_batch } => {
            let dir = out.unwrap_or_else(harness::bench::default_dir);
            if ops {
                if arch != harness::bench::ARCHS[0].name {
                    anyhow::bail!("--ops profiles the {} shape only; drop --arch {arch}", harness::bench::ARCHS[0].name);
                }
                harness::bench::op_profile(&dir, &device, quick)?;
                return Ok(());
            }
            let launches = launch
                .iter()
                .map(|l| {
                    serde_json::from_value(serde_json::Value::String(l.clone()))
                        .map_err(|_| anyhow::anyhow!("--launch: unknown `{l}`; choose from eager, cuda_graph, auto"))
                })
                .collect::<anyhow::Result<Vec<harness::train::graph::StepLaunch>>>()?;
            let args = harness::bench::CliArgs { dir: dir.clone(), device, quick, steps, peak_tflops, decode: !no_decode, only, launches, arch, max_batch };
            harness::bench::run_cli(&args)?;
            for (title, t) in harness::report::bench_tables(&dir)? {
                println!("{title}\n{t}");
            }
            println!("written to {}", dir.display());
            Ok(())
        }
        Cmd::BenchTable { dir } => {
            let tables = harness::report::bench_tables(&dir)?;
            let md: Vec<String> = tables.iter().map(|(title, t)| format!("## {title}\n\n{}", harness::report::to_markdown(t))).collect();
            std::fs::write(dir.join("table.md"), md.join("\n")).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            for (title, t) in &tables {
                println!("{title}\n{t}");
            }
            Ok(())
        }
        Cmd::Eval { run, base, dataset, methods, objective, limit, sets, out } => {
            let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
            let methods = if methods.is_empty() { None } else { Some(methods) };
            let (result, dir) = match run {
                Some(run) => {
                    let dir = out.unwrap_or_else(|| run.join("evals").join(&stamp));
                    (harness::run::eval_run_dir(&run, methods, limit, &sets, &dir)?, dir)
                }
                None => {
                    let dataset = dataset.ok_or_else(|| anyhow::anyhow!("give --run RUN_DIR, or --dataset SPEC (with an optional --base MODEL)"))?;
                    let base = base.unwrap_or_else(|| harness::config::DEFAULT_MODEL.to_string());
                    let dir = out.unwrap_or_else(|| PathBuf::from("runs").join(format!("eval-{stamp}")));
                    let m = methods.unwrap_or_else(|| vec![harness::config::EvalMethod::Generate]);
                    (harness::run::eval_base(&base, &dataset, objective, m, limit, &sets, &dir)?, dir)
                }
            };
            println!(
                "{} / {} split, {} items ({} prompts shortened to fit, {} over-long items skipped)",
                result.dataset, result.split, result.n_items, result.n_truncated, result.n_overlong
            );
            for (title, t) in harness::report::eval_folder_tables(&dir)?.unwrap_or_default() {
                println!("{title}\n{t}");
            }
            println!("written to {}", dir.display());
            Ok(())
        }
        Cmd::Study { name, sets, results: _, dry_run: true, .. } => {
            let s = harness::study::load(&harness::study::spec::resolve_path(&name, std::path::Path::new("studies")), &sets)?;
            println!("study {} ({}): {} runs", s.name, s.path.display(), s.points.len());
            for p in &s.points {
                println!("  {}", p.id);
            }
            Ok(())
        }
        Cmd::StudyWorker { folder, checkpoints, device, worker, shard } => {
            let stop = stop_flag(false);
            let d = match harness::study::parse_devices(&device)?.as_slice() {
                [d] => *d,
                _ => anyhow::bail!("study-worker --device takes one device, not `{device}`"),
            };
            let shard = shard.as_deref().map(harness::study::Shard::parse).transpose()?;
            let w = harness::study::work_folder(&folder, &checkpoints, d, shard, worker, Some(&stop))?;
            eprintln!("worker {worker}: {} runs{}", w.ran, if w.interrupted { ", stopped by Ctrl-C" } else { "" });
            Ok(())
        }
        Cmd::Study { name, sets, results, dry_run: false, merge: true, .. } => {
            let o = harness::study::merge_study(&name, harness::study::StudyOpts { results, sets, ..Default::default() })?;
            println!("merged {}: {} done, {} failed of {} runs", o.folder.display(), o.done, o.failed, o.total);
            let (_, r) = harness::study::report::report(&o.folder)?;
            print!("{}", r.terminal());
            Ok(())
        }
        Cmd::Study { name, sets, results, dry_run: false, wait, devices, shard, merge: false } => {
            let stop = stop_flag(true);
            let devices = devices.as_deref().map(harness::study::parse_devices).transpose()?;
            let shard = shard.as_deref().map(harness::study::Shard::parse).transpose()?;
            let opts = harness::study::StudyOpts { results, sets, stop: Some(&stop), progress: true, wait, devices, shard, ..Default::default() };
            let o = harness::study::run_study(&name, opts)?;
            if let Some(sh) = shard {
                println!("shard {} of {}: {} done, {} failed of its {} runs ({} finished earlier)", sh.spec(), o.folder.display(), o.done, o.failed, o.total, o.skipped);
                if o.interrupted {
                    anyhow::bail!("interrupted: rerun the same command to resume shard {} of {}", sh.spec(), o.folder.display());
                }
                println!("when every shard is done: harness study {name} --merge");
                return Ok(());
            }
            println!(
                "{} {}: {} done, {} failed of {} runs ({} finished earlier)",
                if o.resumed { "resumed" } else { "study folder" },
                o.folder.display(),
                o.done,
                o.failed,
                o.total,
                o.skipped
            );
            if o.interrupted {
                anyhow::bail!("interrupted: rerun the same command to resume {}", o.folder.display());
            }
            let (_, r) = harness::study::report::report(&o.folder)?;
            print!("{}", r.terminal());
            Ok(())
        }
        Cmd::Export { run_dir, out, merge } => {
            let e = harness::export::export(&run_dir, &out, merge)?;
            for f in &e.files {
                println!("{}", f.display());
            }
            println!("exported {} ({}) to {}", run_dir.display(), if e.merged { "merged" } else { "base + peft adapter" }, out.display());
            Ok(())
        }
        Cmd::Report { path } => {
            // A run or evaluation folder (eval.json): its tables, frontier included.
            if let Some(tables) = harness::report::eval_folder_tables(&path)? {
                for (title, t) in tables {
                    println!("{title}\n{t}");
                }
                return Ok(());
            }
            let (folder, r) = harness::study::report::report(&path)?;
            print!("{}", r.terminal());
            println!("written to {}", ddm_schema::StudyDir::new(&folder).report_md().display());
            Ok(())
        }
        Cmd::Compare { a, b } => {
            print!("{}", harness::study::report::compare(&a, &b)?.terminal());
            Ok(())
        }
    }
}
