//! `veil`: the companion CLI. Parses flags and prints what the library reports.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use veil::{config::Config, doctor, engine, faces, paths::Dirs};

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
        /// Photos to look at (JPEG or PNG).
        #[arg(required = true, value_name = "PHOTO")]
        photos: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write the photo with the boxes and landmarks drawn on it to this PNG (one photo only).
        #[arg(long, value_name = "OUT.png")]
        draw: Option<PathBuf>,
    },
    /// Show or check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults filled in, `~` expanded) as TOML.
    Show,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::from_env()?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Doctor => {
            let report = doctor::run(cli.config.as_deref(), &dirs);
            write!(out, "{report}")?;
            Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Faces { photos, json, draw } => {
            let (config, _) = Config::load(cli.config.as_deref(), &dirs)?;
            let config = config.resolve(&dirs);
            find_faces(&config, &photos, json, draw.as_deref(), &mut out)
        }
        Command::Config { command: ConfigCommand::Show } => {
            let (config, source) = Config::load(cli.config.as_deref(), &dirs)?;
            writeln!(out, "# effective configuration; source: {source}")?;
            write!(out, "{}", config.resolve(&dirs).to_toml())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `veil faces`: loads the detector once, then reports each photo in turn.
fn find_faces(
    config: &Config,
    photos: &[PathBuf],
    json: bool,
    draw: Option<&std::path::Path>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if draw.is_some() && photos.len() != 1 {
        anyhow::bail!("--draw takes exactly one photo ({} given)", photos.len());
    }
    let device = engine::select_device(config.engine.device)?;
    let models = config.models.dir.clone().unwrap_or_default();
    let detector = faces::Detector::load(&models, &config.faces, device)?;
    let mut reports = Vec::new();
    for photo in photos {
        let mut image = faces::open_upright(photo)?;
        let found = detector.detect(&image)?;
        if json {
            reports.push(serde_json::json!({
                "photo": photo,
                "width": image.width(),
                "height": image.height(),
                "faces": found.faces,
                "too_small": found.too_small,
            }));
        } else {
            write_table(out, photo, &image, &found, config.faces.min_face_px)?;
        }
        if let Some(target) = draw {
            faces::draw(&mut image, &found.faces);
            image
                .save_with_format(target, image::ImageFormat::Png)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(ExitCode::SUCCESS)
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
            "  {:>2}  {:>27}  {:>5}  landmarks (eyes, nose, mouth corners)",
            "#", "box x1,y1 - x2,y2", "score"
        )?;
    }
    for (i, f) in found.faces.iter().enumerate() {
        let b = &f.bbox;
        let corners = format!("{:.0},{:.0} - {:.0},{:.0}", b.x1, b.y1, b.x2, b.y2);
        let marks: Vec<String> = f.landmarks.iter().map(|[x, y]| format!("{x:.0},{y:.0}")).collect();
        writeln!(out, "  {:>2}  {corners:>27}  {:.3}  {}", i + 1, f.score, marks.join(" "))?;
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
