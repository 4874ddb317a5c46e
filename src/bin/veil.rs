//! `veil`: the companion CLI. Parses flags and prints what the library reports.

use std::{io::Write, os::unix::fs::MetadataExt, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use veil::{
    bench,
    config::Config,
    control::{
        self,
        client::{Client, ClientError},
    },
    doctor, engine, eval, faces, imageio,
    paths::Dirs,
    pipeline::{self, FileJob, JobOptions, Pipeline},
    preview,
    protect::{Preset, Rng},
    service_unit::{self, Manager, Setup},
};

/// Protects personal photos against deepfakes. `veil doctor` checks that everything is in place.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file to use instead of the platform's (~/.config/veil/veil.toml on Linux).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check libtorch, CUDA, the configuration, the models and the folders; exits non-zero on a problem.
    Doctor,
    /// Find the faces in photos: boxes, scores and landmarks, in full-resolution pixels.
    Faces {
        /// Photos to look at (JPEG, PNG, WebP, TIFF; HEIC/HEIF and AVIF where the build reads them).
        #[arg(required = true, value_name = "PHOTO")]
        photos: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write the photo with the boxes and landmarks drawn on it to this PNG (one photo only).
        #[arg(long, value_name = "OUT.png")]
        draw: Option<PathBuf>,
        /// Let --draw replace an existing file (never the photo itself).
        #[arg(long, requires = "draw")]
        force: bool,
    },
    /// Protect photos (files or folders) without the daemon: writes OUT/<same name> with the
    /// original's metadata. The originals are never modified.
    Protect {
        /// Photos, and folders to walk (sub-folders mirrored in DIR).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Folder for the protected copies (default: the first configured folder's output). Walking a
        /// folder never enters this one.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// auto, fast, balanced, strong or cpu (default: the configured preset).
        #[arg(long, value_name = "P")]
        preset: Option<Preset>,
        /// One JSON object per photo on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Measure the protection the paper's way on aligned faces with attributes.csv: % of faces
    /// disrupted per generator, condition and defense, with baselines, through the real pipeline.
    Eval {
        /// A CelebA-style folder: attributes.csv and one folder per split.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The split to measure on: val (to tune on) or test (to report).
        #[arg(long, default_value = "val", value_parser = ["val", "test"])]
        split: String,
        /// Evaluate only the first N images of the split.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// auto, fast, balanced, strong or cpu (default: the configured preset).
        #[arg(long, value_name = "P")]
        preset: Option<Preset>,
        /// Seed of the random starts and spread draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Turn each photo by this many degrees before protecting it (a tilted head); the attacker
        /// turns it upright again before cropping.
        #[arg(long, value_name = "DEGREES", default_value_t = 0.0, allow_negative_numbers = true, value_parser = tilt_degrees)]
        tilt: f64,
        /// Enlarge each photo this many times before protecting it, so its face is as large as in a
        /// camera photo (6: CelebA's 178×218 becomes 1068×1308); the attacker's crop is enlarged
        /// with it
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        upscale: u32,
        /// Run Veil's attack only, without the baselines (±ε noise, single condition, no spread):
        /// about a third of the time.
        #[arg(long)]
        no_baselines: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure speed: the attack on one face, and 12 MP photos with 1 and 4 faces end to end
    /// (medians after warm-up), with peak memory.
    Bench {
        /// Veil's test data folder (portraits/ and exif-samples/jpg/mobile/), used to build the photos.
        #[arg(long, value_name = "DIR", default_value = "../shared/data")]
        data: PathBuf,
        /// Timed runs per measurement (their median is reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        runs: u16,
        /// Untimed runs before each measurement.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// auto, fast, balanced, strong or cpu (default: the configured preset).
        #[arg(long, value_name = "P")]
        preset: Option<Preset>,
        /// Also time the attack on this many faces at once (1: only one face).
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        batch: u16,
        /// Skip the 12 MP photo with four faces (the slowest part on a CPU).
        #[arg(long)]
        no_four_faces: bool,
        /// Also time this many 12 MP one-face photos handed over together, as `veild` does (default:
        /// two of the engine's photo batches, so one is read and written while the other is attacked:
        /// 16 on a GPU; none when the engine takes one photo at a time, as on a CPU); 1 leaves it out.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        photos: Option<u16>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write one PNG sheet showing what face generators make of a photo's faces before and after
    /// protection, with the MSE per generator and condition and a verdict per generator.
    Preview {
        /// The photo to protect in memory (it is not written).
        #[arg(value_name = "PHOTO")]
        photo: PathBuf,
        /// The sheet to write (default: <photo stem>-preview.png in the current folder).
        #[arg(long, value_name = "FILE.png")]
        out: Option<PathBuf>,
        /// auto, fast, balanced, strong or cpu (default: the configured preset).
        #[arg(long, value_name = "P")]
        preset: Option<Preset>,
        /// Overwrite the sheet if it exists.
        #[arg(long)]
        force: bool,
        /// Print what the sheet shows (sizes, panels, MSEs, verdicts) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon: state, device, models, queue, counts, folders, last errors.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's jobs, a page at a time.
    Jobs {
        /// Only jobs with this status: pending, running, done, failed or skipped.
        #[arg(long, value_name = "S", value_parser = ["pending", "running", "done", "failed", "skipped"])]
        status: Option<String>,
        /// At most N jobs (1 to 1000).
        #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Jobs numbered above N (the next page).
        #[arg(long, default_value_t = 0, value_name = "N")]
        after: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop handing photos to the engine (the current ones finish).
    Pause {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hand photos to the engine again.
    Resume {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon read its configuration again (like SIGHUP).
    Reload {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Have the daemon protect these files or folders now, inside the watched folders or not.
    Add {
        /// Photos, and folders to walk.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Output folder for photos outside the watched folders (default: the first folder's output).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Try a job again (by its number), or every failed one and every one waiting for another try
    /// (--all).
    #[command(override_usage = "veil retry <ID|--all> [--json]")]
    Retry {
        /// The job's number, as `veil jobs` shows it.
        #[arg(value_name = "ID", required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every failed job, and every one waiting for another try.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow the daemon's progress live (bars per photo); --json prints the event stream.
    Watch {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show or check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run veild as a service of your user: install, uninstall, status.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (veil.1 and veil-COMMAND.1) into DIR (used to build the packages).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write the systemd user unit (launchd agent on macOS) running the veild next to this veil,
    /// then enable and start it. `--config` is passed on to veild.
    Install {
        /// Print the file and the commands instead of writing and running them.
        #[arg(long)]
        dry_run: bool,
        /// Write the file but do not enable or start the service.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and disable the service and remove the file `install` wrote.
    Uninstall {
        /// Print what would be done instead of doing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Whether the service is installed, which veild it runs, and whether it is enabled and active.
    Status,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults filled in, `~` expanded) as TOML.
    Show,
}

/// Exit status when the daemon is not running.
const NOT_RUNNING: u8 = 3;

fn main() -> ExitCode {
    // Library warnings (a protected copy that cannot be re-read, say) reach the terminal; VEIL_LOG
    // overrides. A broken VEIL_LOG is reported, not fatal.
    if let Ok(filter) = veil::config::LogFilter::try_from("warn".to_string()) {
        if let Err(e) = veil::logging::init(&filter) {
            eprintln!("veil: logging: {e}");
        }
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::NotRunning { .. })) => {
            eprintln!("veil: {}", veil::logging::describe(&e));
            ExitCode::from(NOT_RUNNING)
        }
        Err(e) => {
            eprintln!("veil: {}", veil::logging::describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    // Service files, completions and man pages do not need the user's directories.
    let dirs = Dirs::from_env;
    match cli.command {
        Command::Service { command } => service(command, cli.config.as_deref(), &mut out),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics when its writer fails (a closed pipe, a full
            // disk), where a write error here is reported like any other command's.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "veil", &mut script);
            out.write_all(&script)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => write_man_pages(&dir),
        Command::Doctor => {
            let report = doctor::run(cli.config.as_deref(), &dirs()?);
            write!(out, "{report}")?;
            Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Faces { photos, json, draw, force } => {
            if draw.is_some() && photos.len() != 1 {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::WrongNumberOfValues,
                        format!("--draw takes exactly one photo ({} given)", photos.len()),
                    )
                    .exit();
            }
            let (config, _) = effective_config(cli.config.as_deref())?;
            let draw = draw.map(|target| Draw { target, force });
            find_faces(&config, &photos, json, draw.as_ref(), &mut out)
        }
        Command::Protect { paths, out: out_dir, preset, json } => {
            let (config, _) = effective_config(cli.config.as_deref())?;
            protect(&config, &paths, out_dir, preset, json, &mut out)
        }
        Command::Eval { data, split, limit, preset, seed, tilt, upscale, no_baselines, json } => {
            let (config, _) = effective_config(cli.config.as_deref())?;
            let pipeline = load_pipeline(&config)?;
            let limit = limit.map(|n| n as usize);
            let bar = progress(limit.unwrap_or(0) as u64);
            let report = eval::run(
                &pipeline,
                &eval::Options { data, split, limit, preset, seed, tilt, upscale, baselines: !no_baselines },
                |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )?;
            bar.finish_and_clear();
            print(&mut out, json, &report.to_json(), |_| report.table())
        }
        Command::Bench { data, runs, warmup, preset, batch, no_four_faces, photos, json } => {
            let (config, _) = effective_config(cli.config.as_deref())?;
            let mut pipeline = load_pipeline(&config)?;
            let photos = match (photos, pipeline.photo_batch()) {
                (Some(n), _) => usize::from(n),
                (None, 1) => 1,
                (None, batch) => 2 * batch,
            };
            let bar = progress(0);
            let report = bench::run(
                &mut pipeline,
                &bench::Options {
                    data,
                    runs: usize::from(runs),
                    warmup,
                    preset,
                    batch: usize::from(batch),
                    four_faces: !no_four_faces,
                    photos,
                },
                |msg| {
                    bar.set_message(msg.to_string());
                    bar.tick();
                },
            )?;
            bar.finish_and_clear();
            print(&mut out, json, &report.to_json(), |_| report.table())
        }
        Command::Preview { photo, out: sheet, preset, force, json } => {
            let (config, _) = effective_config(cli.config.as_deref())?;
            let sheet = match sheet {
                Some(p) => p,
                None => preview::default_out(&photo)?,
            };
            if same_file(&sheet, &photo) {
                anyhow::bail!(
                    "{}: is the photo itself; the sheet would replace it (name another file with --out)",
                    sheet.display()
                );
            }
            png_target(&sheet, "the sheet", "--out")?;
            if std::fs::symlink_metadata(&sheet).is_ok() && !force {
                return Err(preview::PreviewError::Exists { path: sheet }.into());
            }
            let source = imageio::read(&photo, &config.imageio)?;
            let pipeline = load_pipeline(&config)?;
            let mut rng = Rng::new(config.protect.seed());
            let shown = preview::render(&pipeline, &source, &pipeline.params(preset), &mut rng)?;
            preview::save(&shown.sheet, &sheet, force)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&shown.to_json(&sheet))?)?;
            } else {
                writeln!(out, "{}", shown.summary(&sheet))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let status: control::StatusReport =
                client(cli.config.as_deref(), &dirs()?)?.call("GET", "/v1/status", None::<&()>)?;
            print(&mut out, json, &status, control::client::status_table)
        }
        Command::Jobs { status, limit, after, json } => {
            let query = format!("/v1/jobs?limit={limit}&after={after}&status={}", status.unwrap_or_default());
            let page: control::JobsPage =
                client(cli.config.as_deref(), &dirs()?)?.call("GET", &query, None::<&()>)?;
            print(&mut out, json, &page, control::client::jobs_table)
        }
        Command::Pause { json } => post(cli.config.as_deref(), &dirs()?, "/v1/pause", json, &mut out),
        Command::Resume { json } => post(cli.config.as_deref(), &dirs()?, "/v1/resume", json, &mut out),
        Command::Reload { json } => post(cli.config.as_deref(), &dirs()?, "/v1/reload", json, &mut out),
        Command::Add { paths, out: out_dir, json } => {
            let absolute = |p: &PathBuf| {
                std::path::absolute(p)
                    .map(|a| control::client::without_dot_dot(&a))
                    .with_context(|| format!("{}", p.display()))
            };
            let request = control::ProtectRequest {
                paths: paths.iter().map(absolute).collect::<anyhow::Result<_>>()?,
                output: out_dir.as_ref().map(absolute).transpose()?,
            };
            // JSON carries text: a path that is not UTF-8 cannot be sent.
            if let Some(p) = request.paths.iter().chain(&request.output).find(|p| p.to_str().is_none()) {
                anyhow::bail!(
                    "{}: the daemon's control socket takes UTF-8 paths only; protect it with `veil protect`, \
                     or rename it (a photo inside a watched folder is protected anyway)",
                    p.display()
                );
            }
            let reply: control::ProtectReply =
                client(cli.config.as_deref(), &dirs()?)?.call("POST", "/v1/protect", Some(&request))?;
            let failed = reply.photos.iter().filter(|p| p.outcome == "error").count();
            print(&mut out, json, &reply, |r| {
                r.photos
                    .iter()
                    .map(|p| {
                        let id = p.id.map_or(String::new(), |id| format!(" (job {id})"));
                        let message = p.message.as_ref().map_or(String::new(), |m| format!(": {m}"));
                        format!("{}: {}{id}{message}\n", p.path, p.outcome)
                    })
                    .collect()
            })?;
            Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Retry { id, all, json } => {
            let request = control::RetryRequest { id, all };
            let reply: control::RetryReply =
                client(cli.config.as_deref(), &dirs()?)?.call("POST", "/v1/retry", Some(&request))?;
            print(&mut out, json, &reply, |r| format!("{} job(s) queued again\n", r.retried))
        }
        Command::Watch { json } => watch(&client(cli.config.as_deref(), &dirs()?)?, json, &mut out),
        Command::Config { command: ConfigCommand::Show } => {
            let (config, source) = effective_config(cli.config.as_deref())?;
            // Weights are per model: checked against the models folder's manifest where it reads
            // (`veil doctor` tells what is wrong with the models themselves).
            if let Some(dir) = &config.models.dir {
                if let Ok(manifest) = veil::models::Manifest::load(dir) {
                    veil::protect::ensemble::check_weights(dir, &manifest, &config.protect.weights)
                        .with_context(|| format!("configuration {source}"))?;
                }
            }
            writeln!(out, "# effective configuration; source: {source}")?;
            write!(out, "{}", config.to_toml())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `veil service …`: prints what the library did (or would do).
fn service(
    command: ServiceCommand,
    config: Option<&std::path::Path>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if let ServiceCommand::Install { .. } = command {
        // A unit whose veild exits at once on its configuration would only restart, again and again.
        effective_config(config)
            .context("veild would not start with this configuration; nothing installed")?;
    }
    let setup = Setup::for_current_user(Manager::native(), config)?;
    match command {
        ServiceCommand::Install { dry_run: true, .. } => {
            write!(out, "{}", service_unit::dry_run_install(&setup)?)?
        }
        ServiceCommand::Install { dry_run: false, no_start } => {
            write!(out, "{}", service_unit::install(&setup, !no_start)?)?
        }
        ServiceCommand::Uninstall { dry_run: true } => {
            write!(out, "{}", service_unit::dry_run_uninstall(&setup))?
        }
        ServiceCommand::Uninstall { dry_run: false } => write!(out, "{}", service_unit::uninstall(&setup)?)?,
        ServiceCommand::Status => write!(out, "{}", service_unit::status(&setup)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `veil man DIR`: veil.1 and one page per visible subcommand, from the clap definitions.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = Cli::command();
    command.build();
    let mut pages = vec![("veil".to_string(), command.clone())];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("veil-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The client of the socket the configuration names. A configuration that does not load (one
/// being edited) is told, and the socket is taken from what of it reads, else the default one: the
/// running `veild` keeps the configuration it loaded, and `veil reload` has it say what is wrong.
fn client(path: Option<&std::path::Path>, dirs: &Dirs) -> anyhow::Result<Client> {
    let config = match Config::load(path, dirs) {
        Ok((config, _)) => config,
        Err(e @ veil::config::ConfigError::Read { .. }) => return Err(e.into()),
        Err(e) => match Config::socket_only(path, dirs) {
            Some(config) => {
                eprintln!("veil: warning: {e} (a running veild keeps the configuration it loaded)");
                config
            }
            None => return Err(e.into()),
        },
    };
    Ok(Client::new(&config.resolve(dirs).paths.socket.unwrap_or_else(|| dirs.socket.clone())))
}

/// Prints an answer as JSON or through `table`.
fn print<T: serde::Serialize>(
    out: &mut impl Write,
    json: bool,
    value: &T,
    table: impl Fn(&T) -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        write!(out, "{}", table(value))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `veil pause|resume|reload`.
fn post(
    config: Option<&std::path::Path>,
    dirs: &Dirs,
    path: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let reply: control::StateReply = client(config, dirs)?.call("POST", path, None::<&()>)?;
    // The state is told where the message does not already start with it (`paused: …`).
    print(out, json, &reply, |r| {
        if r.message.starts_with(&r.state) {
            format!("{}\n", r.message)
        } else {
            format!("{} (veild is {})\n", r.message, r.state)
        }
    })
}

/// `veil watch`: a bar per photo from queued to done, until interrupted.
fn watch(client: &Client, json: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let bars = indicatif::MultiProgress::new();
    let mut running: std::collections::HashMap<String, indicatif::ProgressBar> = Default::default();
    let style = indicatif::ProgressStyle::with_template("{spinner} {wide_msg} {elapsed}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    // Bars need a terminal (they are drawn on stderr); when stdout goes to a pipe or a file
    // (`veil watch | tee log`) each event is a plain line there instead.
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !bars.is_hidden();
    for event in client.events()? {
        let event = event?;
        if json {
            writeln!(out, "{}", serde_json::to_string(&event)?)?;
            out.flush()?;
            continue;
        }
        let path = event.path.clone().unwrap_or_default();
        if !live {
            writeln!(out, "{}", control::client::event_line(&event))?;
            out.flush()?;
            continue;
        }
        match event.event.as_str() {
            "subscribed" => bars.println("following veild's progress (Ctrl-C to stop)")?,
            "queued" | "running" => {
                let bar = running.entry(path.clone()).or_insert_with(|| {
                    let bar = bars.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    bar
                });
                bar.set_message(format!("{} {path}", event.event));
            }
            _ => {
                if let Some(bar) = running.remove(&path) {
                    bar.finish_and_clear();
                    bars.remove(&bar);
                }
                bars.println(control::client::event_line(&event))?;
            }
        }
    }
    // veild closes the stream only as it stops: a script following it learns so.
    for bar in running.into_values() {
        bar.finish_and_clear();
    }
    eprintln!("veil: veild stopped (its event stream ended)");
    Ok(ExitCode::from(NOT_RUNNING))
}

/// `--tilt`: degrees from -90 to 90 (a bad value is a usage error, exit status 2).
fn tilt_degrees(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of degrees"))?;
    if !t.is_finite() || t.abs() > 90.0 {
        return Err("must be between -90 and 90 degrees".into());
    }
    Ok(t)
}

fn effective_config(path: Option<&std::path::Path>) -> anyhow::Result<(Config, veil::config::Source)> {
    let dirs = Dirs::from_env()?;
    let (config, source) = Config::load(path, &dirs)?;
    Ok((config.resolve(&dirs), source))
}

fn load_pipeline(config: &Config) -> anyhow::Result<Pipeline> {
    let device = engine::select_device(config.engine.device)?;
    Ok(Pipeline::load(config, device)?)
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
fn progress(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta})") {
        bar.set_style(style);
    }
    bar
}

/// `veil protect`: loads the pipeline once, protects each photo, reports each; a failed photo is
/// reported and the others go on (exit status 1 at the end).
fn protect(
    config: &Config,
    paths: &[PathBuf],
    out_dir: Option<PathBuf>,
    preset: Option<Preset>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let named = if out_dir.is_some() { "--out" } else { "the first [[folders]] output" };
    let out_dir = match out_dir.or_else(|| config.folders.first().map(|f| f.output.clone())) {
        Some(d) => d,
        None => anyhow::bail!("no --out given and no folder configured to take its output"),
    };
    if out_dir.exists() && !out_dir.is_dir() {
        anyhow::bail!("{}: not a folder ({named} names the folder the copies go to)", out_dir.display());
    }
    // Copies put into a watched folder would be protected again by veild, into its output.
    let not_watched = |dir: &std::path::Path| -> anyhow::Result<()> {
        let real = veil::watch::resolved(dir);
        if config.folders.iter().any(|f| real.starts_with(veil::watch::resolved(&f.output))) {
            return Ok(());
        }
        let watched = |f: &&veil::config::FolderConfig| {
            let root = veil::watch::resolved(&f.path);
            real == root || (f.recursive && real.starts_with(&root))
        };
        match config.folders.iter().find(watched) {
            Some(f) => anyhow::bail!(
                "{}: inside the watched folder {}, where veild would protect the copies again; \
                 choose another folder ({named})",
                dir.display(),
                f.path.display()
            ),
            None => Ok(()),
        }
    };
    not_watched(&out_dir)?;
    // Neither this run's copies nor the daemon's are protected again when a folder holds them.
    let mut outputs = vec![out_dir.clone()];
    outputs.extend(config.folders.iter().map(|f| f.output.clone()));
    // Each path on its own: one that cannot be read, or a folder with no photo in it, is reported
    // and the others go on. A photo named twice (or as a file and in its folder) is protected once.
    let mut unusable = 0;
    let mut photos = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        let found = pipeline::collect_photos(std::slice::from_ref(path), &outputs);
        let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        match found {
            Ok(_) if !is_dir && pipeline::is_hidden(path) => {
                unusable += 1;
                report_error(out, json, path, pipeline::HIDDEN_FILE)?;
            }
            Ok(found) if found.photos.is_empty() && is_dir => {
                unusable += 1;
                let is_output = outputs.iter().any(|o| same_file(o, path));
                let why = if is_output {
                    "an output folder: Veil does not protect its own copies again".to_string()
                } else {
                    found.no_photos()
                };
                report_error(out, json, path, &why)?;
            }
            Ok(found) => {
                // A camera's RAW files beside its JPEGs, a GIF, a link: photos to their owner, so said.
                if let Some(what) = found.left_out() {
                    eprintln!("veil: {}: left out {what}", path.display());
                }
                // The same path however it is spelled (hard links are two photos, as in a folder).
                let id = |p: &PathBuf| std::fs::canonicalize(p).ok();
                // A folder's sub-folders are mirrored under the output folder; a file goes straight in.
                let within = |p: &PathBuf| {
                    let rel = p.parent().and_then(|d| d.strip_prefix(path).ok()).filter(|_| is_dir);
                    out_dir.join(rel.unwrap_or(std::path::Path::new("")))
                };
                photos.extend(
                    found
                        .photos
                        .into_iter()
                        .filter(|p| id(p).is_none_or(|id| seen.insert(id)))
                        .map(|p| (within(&p), p)),
                );
            }
            Err(e) => {
                unusable += 1;
                report_error(out, json, path, &e.to_string())?;
            }
        }
    }
    // A copy Veil protected (veild or this command), given back: not protected twice (told, not an
    // error). The copies written here are recorded for the next time.
    let mut known = config.paths.state_dir.as_deref().map(veil::store::KnownCopies::open);
    if let Some(known) = &known {
        let mut kept = Vec::with_capacity(photos.len());
        for (dir, p) in photos {
            let Some(of) = known.source_of(&p) else {
                kept.push((dir, p));
                continue;
            };
            let why = veil::store::own_copy(&of);
            if json {
                writeln!(out, "{}", serde_json::json!({"source": p.to_string_lossy(), "skipped": why}))?;
            }
            eprintln!("veil: {}: {why}", p.display());
        }
        photos = kept;
    }
    if photos.is_empty() {
        eprintln!("veil: no photo to protect");
        return Ok(ExitCode::FAILURE);
    }
    let mut failed = 0;
    // Made once the photos are known to be there (a folder that did not exist holds none of them).
    let dirs: std::collections::BTreeSet<&PathBuf> = photos.iter().map(|(dir, _)| dir).collect();
    // A mirrored sub-folder may reach into a watched folder too (`--out ~` for `~/Backup/Pictures`).
    dirs.iter().try_for_each(|d| not_watched(d))?;
    // Those made here, taken away again at the end where no copy went into them.
    let made: std::collections::BTreeSet<PathBuf> = std::iter::once(&out_dir)
        .chain(dirs.iter().copied())
        .flat_map(|d| d.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()))
        .map(std::path::Path::to_path_buf)
        .collect();
    for dir in std::iter::once(&out_dir).chain(dirs) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (dirs, photos): (Vec<PathBuf>, Vec<PathBuf>) = photos.into_iter().unzip();
    let mut pipeline = load_pipeline(config)?;
    let mut rng = Rng::new(config.protect.seed());
    let options = JobOptions { preset, ..JobOptions::default() };
    let bar = progress(photos.len() as u64);
    // The engine runs on its own thread, reading ahead and writing behind; this one reports each
    // photo in the order given as soon as it and those before it are done.
    let (tx, results) = std::sync::mpsc::channel();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let jobs = photos.iter().zip(&dirs).enumerate().map(|(i, (p, dir))| {
            (i, FileJob { source: p.clone(), out_dir: dir.clone(), options: options.clone() })
        });
        let (pipeline, rng) = (&mut pipeline, &mut rng);
        scope.spawn(move || {
            let mut jobs = jobs;
            pipeline.protect_stream(
                || jobs.next(),
                |i, result| {
                    let _ = tx.send((i, result));
                },
                rng,
                pipeline::Grouping::Deterministic,
                &std::sync::atomic::AtomicBool::new(false),
            );
        });
        let mut pending = std::collections::BTreeMap::new();
        let mut next = 0;
        let mut unrecorded = false;
        for (i, result) in results {
            pending.insert(i, result);
            while let Some(result) = pending.remove(&next) {
                let photo = &photos[next];
                next += 1;
                if let (Ok(outcome), Some(known)) = (&result, known.as_mut()) {
                    if let Some(warning) = record_copy(known, outcome, &mut unrecorded) {
                        bar.suspend(|| eprintln!("{warning}"));
                    }
                }
                match result {
                    Ok(outcome) if json => writeln!(out, "{}", outcome.to_json())?,
                    Ok(outcome) => bar.suspend(|| writeln!(out, "{}", outcome.summary()))?,
                    Err(e) => {
                        failed += 1;
                        if json {
                            writeln!(out, "{}", error_json(photo, &e.to_string()))?;
                        }
                        bar.suspend(|| eprintln!("veil: {}", naming(photo, &e.to_string())));
                    }
                }
                bar.inc(1);
                if let Some(name) = photos.get(next).and_then(|p| p.file_name()) {
                    bar.set_message(name.to_string_lossy().into_owned());
                }
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    // Deepest first (a folder sorts before what is in it); one holding anything stays (remove_dir
    // refuses it).
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    if failed > 0 {
        eprintln!("veil: {failed} of {} photo(s) could not be protected", photos.len());
    }
    Ok(if failed + unusable > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Records a protected copy `veil protect` wrote, so that it is not protected again when it is given
/// back (to `veil protect` or to `veild`); the warning to tell for the first failure (once).
fn record_copy(
    known: &mut veil::store::KnownCopies,
    outcome: &pipeline::Outcome,
    unrecorded: &mut bool,
) -> Option<String> {
    let perturbed = matches!(outcome.action, pipeline::Action::Protected | pipeline::Action::ProtectedWhole);
    let written = outcome.written.as_ref().filter(|_| perturbed)?;
    let source = std::fs::canonicalize(&outcome.source).unwrap_or_else(|_| outcome.source.clone());
    let e = known.record(&source, &written.path).err()?;
    (!std::mem::replace(unrecorded, true)).then(|| {
        format!("veil: the copies written are not recorded ({e}): given back to Veil, they would be protected twice")
    })
}

/// `{"source": …, "error": …}`, the JSON line of a photo or path that failed.
fn error_json(path: &std::path::Path, message: &str) -> serde_json::Value {
    serde_json::json!({"source": path.to_string_lossy(), "error": message})
}

/// A path that failed before any work: a JSON line on stdout under `--json`, and the message, with
/// the path, on stderr.
fn report_error(out: &mut impl Write, json: bool, path: &std::path::Path, why: &str) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", error_json(path, why))?;
    }
    eprintln!("veil: {}", naming(path, why));
    Ok(())
}

/// `message` about `path`, starting with the path unless it already names it (an output folder that
/// cannot be written names no photo).
fn naming(path: &std::path::Path, message: &str) -> String {
    let shown = path.display().to_string();
    if message.starts_with(&shown) {
        message.to_string()
    } else {
        format!("{shown}: {message}")
    }
}

/// Whether `a` and `b` are the same file (device and inode, whatever the paths), both there.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Refuses `path`, where `what` (a PNG) is to be written as `flag` says, unless it is a file name
/// ending in `.png`: PNG bytes under another photo's name would be misread.
fn png_target(path: &std::path::Path, what: &str, flag: &str) -> anyhow::Result<()> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        anyhow::bail!("{}: {what} is written as a PNG; give {flag} a name ending in .png", path.display());
    }
    if path.is_dir() {
        anyhow::bail!("{}: is a folder; give {flag} a file name ending in .png", path.display());
    }
    Ok(())
}

/// `veil faces --draw`: where the drawing goes, and whether it may replace a file there.
struct Draw {
    target: PathBuf,
    force: bool,
}

/// `veil faces`: loads the detector once, then reports each photo in turn; a photo that cannot be
/// read is reported (an `error` entry under `--json`) and the others go on (exit status 1 at the
/// end).
fn find_faces(
    config: &Config,
    photos: &[PathBuf],
    json: bool,
    draw: Option<&Draw>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if let Some(Draw { target, force }) = draw {
        if photos.iter().any(|p| same_file(p, target)) {
            anyhow::bail!("{}: is the photo itself; --draw would replace it", target.display());
        }
        png_target(target, "the drawing", "--draw")?;
        if !force && std::fs::symlink_metadata(target).is_ok() {
            return Err(preview::PreviewError::Exists { path: target.clone() }.into());
        }
    }
    let device = engine::select_device(config.engine.device)?;
    let models = config.models.dir.clone().unwrap_or_default();
    let detector = faces::Detector::load(&models, &config.faces, device)?;
    let mut reports = Vec::new();
    let mut failed = 0;
    for photo in photos {
        let mut image = match imageio::read(photo, &config.imageio) {
            Ok(p) => p.pixels,
            Err(e) => {
                failed += 1;
                eprintln!("veil: {e}");
                if json {
                    reports
                        .push(serde_json::json!({"photo": photo.to_string_lossy(), "error": e.to_string()}));
                }
                continue;
            }
        };
        let found = detector.detect(&image)?;
        if json {
            // Each face with the square an aligner would cut from it (null when its landmarks disagree
            // with its box).
            let faces: Vec<serde_json::Value> = found
                .faces
                .iter()
                .map(|f| {
                    let mut v = serde_json::to_value(f)?;
                    v["aligned"] = serde_json::to_value(f.aligned_crop())?;
                    Ok(v)
                })
                .collect::<serde_json::Result<_>>()?;
            reports.push(serde_json::json!({
                "photo": photo.to_string_lossy(),
                "width": image.width(),
                "height": image.height(),
                "faces": faces,
                "too_small": found.too_small,
            }));
        } else {
            write_table(out, photo, &image, &found, config.faces.min_face_px)?;
        }
        if let Some(Draw { target, force }) = draw {
            faces::draw(&mut image, &found.faces);
            let mut png = Vec::new();
            image
                .write_with_encoder(image::codecs::png::PngEncoder::new(&mut png))
                .with_context(|| format!("cannot encode {}", target.display()))?;
            imageio::write_whole(target, &png, *force).map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => preview::PreviewError::Exists { path: target.clone() },
                _ => preview::PreviewError::Write { path: target.clone(), source },
            })?;
        }
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn write_table(
    out: &mut impl Write,
    photo: &std::path::Path,
    image: &image::RgbImage,
    found: &faces::Detections,
    min_face_px: u32,
) -> std::io::Result<()> {
    let n = found.faces.len();
    write!(
        out,
        "{}: {}×{}, {n} face{}",
        photo.display(),
        image.width(),
        image.height(),
        if n == 1 { "" } else { "s" }
    )?;
    if found.too_small > 0 {
        write!(out, " ({} smaller than {min_face_px} px ignored)", found.too_small)?;
    }
    writeln!(out)?;
    if n > 0 {
        writeln!(
            out,
            "  {:>2}  {:>27}  {:>5}  {:>20}  landmarks (eyes, nose, mouth corners)",
            "#", "box x1,y1 - x2,y2", "score", "aligned x,y side turn"
        )?;
    }
    for (i, f) in found.faces.iter().enumerate() {
        let b = &f.bbox;
        let corners = format!("{:.0},{:.0} - {:.0},{:.0}", b.x1, b.y1, b.x2, b.y2);
        let aligned = match f.aligned_crop() {
            Some(sq) => format!("{:.0},{:.0} {:.0} {:+.0}°", sq.x, sq.y, sq.side, sq.angle),
            None => "-".to_string(),
        };
        let marks: Vec<String> = f.landmarks.iter().map(|[x, y]| format!("{x:.0},{y:.0}")).collect();
        writeln!(out, "  {:>2}  {corners:>27}  {:.3}  {aligned:>20}  {}", i + 1, f.score, marks.join(" "))?;
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
