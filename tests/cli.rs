//! End to end: the real `veil` and `veild` binaries, each in its own temporary home, run without
//! `LD_LIBRARY_PATH` (the rpath must find libtorch).

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use tch::{CModule, Kind, Tensor};

mod common;
use common::{output_within, Daemon, Home, CLI_LIMIT, REFUSED_LIMIT};

impl Home {
    fn veil(&self, args: &[&str]) -> Output {
        output_within(self.command(env!("CARGO_BIN_EXE_veil")).args(args), CLI_LIMIT)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A models folder with the MTCNN weights from the checkout (converted by `make setup`) and,
    /// if asked, a manifest naming one tiny traced generator.
    fn models(&self, with_generator: bool) -> PathBuf {
        let dir = self.path().join("models");
        std::fs::create_dir_all(dir.join("mtcnn")).unwrap();
        for stage in ["pnet", "rnet", "onet"] {
            let from =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/mtcnn/{stage}.safetensors"));
            std::fs::copy(&from, dir.join(format!("mtcnn/{stage}.safetensors")))
                .unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", from.display()));
        }
        if with_generator {
            // forward(x [N,3,8,8] in [-1,1], c [N,2]) -> tanh(x + mean(c)), traced into TorchScript.
            let x = Tensor::zeros([1, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
            let c = Tensor::zeros([1, 2], (Kind::Float, tch::Device::Cpu));
            let module = CModule::create_by_tracing("Tiny", "forward", &[x, c], &mut |inputs| {
                let shift = inputs[1].mean_dim(&[1i64][..], true, Kind::Float).view([-1, 1, 1, 1]);
                vec![(&inputs[0] + shift).tanh()]
            })
            .unwrap();
            module.save(dir.join("tiny.pt")).unwrap();
            std::fs::write(
                dir.join("manifest.toml"),
                "[[model]]\nname = \"tiny\"\nfile = \"tiny.pt\"\nrole = \"ensemble\"\ninput_size = 8\n\
                 attributes = [\"Male\", \"Young\"]\nconditions = [[1, 0], [0, 1]]\n",
            )
            .unwrap();
        }
        dir
    }

    fn config_with_models(&self, models: &Path) -> PathBuf {
        self.write(
            "veil.toml",
            &format!(
                "[engine]\ndevice = \"auto\"\n\n[models]\ndir = \"{}\"\n\n[[folders]]\npath = \"~/In\"\noutput = \"~/Out\"\n",
                models.display()
            ),
        )
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn doctor_reports_libtorch_and_the_cpu_without_ld_library_path() {
    let home = Home::new();
    let models = home.models(true);
    let config = home.config_with_models(&models);
    let out = home.veil(&["--config", config.to_str().unwrap(), "doctor"]);
    let text = stdout(&out);
    assert!(out.status.success(), "doctor failed:\n{text}{}", stderr(&out));
    assert!(text.contains("libtorch") && text.contains("2.11.0"), "{text}");
    assert!(text.contains(&format!("{}: parsed", config.display())), "{text}");
    assert!(text.contains("CUDA"), "{text}");
    // This machine (and CI's) has no GPU: auto must land on the CPU and say so.
    if !text.contains("ok  CUDA") {
        assert!(text.contains("cpu (") && text.contains("engine.device = \"auto\""), "{text}");
    }
    assert!(text.contains("MTCNN pnet, rnet, onet load"), "{text}");
    assert!(text.contains("model tiny") && text.contains("Ensemble, tiny.pt"), "{text}");
    assert!(text.contains(&format!("{}/In: missing", home.path().display())), "{text}");
    assert!(text.contains("socket") && text.contains("state"), "{text}");
}

#[test]
fn doctor_fails_when_generators_are_missing_and_says_where_it_looked() {
    let home = Home::new();
    let models = home.models(false);
    let config = home.config_with_models(&models);
    let out = home.veil(&["--config", config.to_str().unwrap(), "doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&models.join("manifest.toml").display().to_string()), "{text}");
    assert!(text.contains("problem(s) above"), "{text}");
}

#[test]
fn doctor_fails_when_cuda_is_demanded_but_absent() {
    let home = Home::new();
    let models = home.models(true);
    let config = home.write(
        "cuda.toml",
        &format!("[engine]\ndevice = \"cuda:0\"\n[models]\ndir = \"{}\"\n", models.display()),
    );
    let out = home.veil(&["--config", config.to_str().unwrap(), "doctor"]);
    let text = stdout(&out);
    if text.contains("ok  CUDA") {
        return; // a GPU machine: cuda:0 exists
    }
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("engine.device is cuda:0 but CUDA is not available"), "{text}");
}

#[test]
fn a_bad_config_is_named_with_its_line_and_key() {
    let home = Home::new();
    let config = home.write("bad.toml", "[engine]\ndevice = \"cuda\"\n\n[log]\nlevel = \"debug\"\n");
    let out = home.veil(&["--config", config.to_str().unwrap(), "config", "show"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&config.display().to_string()) && err.contains("line 5") && err.contains("`log.level`"),
        "{err}"
    );

    let out = output_within(
        home.command(env!("CARGO_BIN_EXE_veild")).args(["--config", config.to_str().unwrap()]),
        REFUSED_LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`log.level`"), "{}", stderr(&out));
}

#[test]
fn config_show_prints_the_effective_defaults_without_a_file() {
    let home = Home::new();
    let out = home.veil(&["config", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let expected_file = home.path().join(".config/veil/veil.toml");
    assert!(text.contains(&format!("built-in defaults (no file at {})", expected_file.display())), "{text}");
    let shown: veil::config::Config = toml::from_str(&text).unwrap();
    assert_eq!(shown.folders[0].path, home.path().join("Pictures/Veil/To-Share"));
    assert_eq!(shown.folders[0].output, home.path().join("Pictures/Veil/Protected"));
    assert_eq!(shown.paths.socket, Some(home.path().join("run/veil/veil.sock")));

    // The platform file is picked up when present.
    home.write(".config/veil/veil.toml", "[engine]\ndevice = \"cpu\"\n");
    let text = stdout(&home.veil(&["config", "show"]));
    assert!(
        text.contains(&format!("source: {}", expected_file.display())) && text.contains("device = \"cpu\""),
        "{text}"
    );
}

/// Starts veild with `args` and waits for `ready` on its stderr.
fn start_veild(home: &Home, args: &[&str], ready: &str) -> Daemon {
    let d = Daemon::spawn(home.command(env!("CARGO_BIN_EXE_veild")).args(args));
    d.wait_log(ready, Duration::from_secs(60));
    d
}

#[test]
fn veild_starts_on_the_defaults_creates_the_folders_and_stops_cleanly_on_ctrl_c() {
    let home = Home::new();
    let d = start_veild(&home, &[], "share folder");
    assert!(home.path().join("Pictures/Veil/To-Share").is_dir());
    assert!(home.path().join("Pictures/Veil/Protected").is_dir());
    let (status, log) = d.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("config: built-in defaults"), "{log}");
    assert!(log.contains("device: "), "{log}");
    assert!(log.contains("models: "), "{log}");
    assert!(log.contains("SIGINT received") && log.contains("shutting down"), "{log}");
}

#[test]
fn veild_logs_its_config_device_and_models_and_stops_on_sigterm() {
    let home = Home::new();
    let models = home.models(true);
    let config = home.config_with_models(&models);
    let d = start_veild(&home, &["--config", config.to_str().unwrap()], "share folder");
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains(&format!("config: {}", config.display())), "{log}");
    assert!(log.contains("face detector: MTCNN loaded"), "{log}");
    assert!(log.contains("generator tiny (ensemble) loads"), "{log}");
    assert!(home.path().join("In").is_dir() && home.path().join("Out").is_dir());
}

#[test]
fn veil_log_overrides_the_configured_filter() {
    let home = Home::new();
    let mut cmd = home.command(env!("CARGO_BIN_EXE_veild"));
    let out = output_within(cmd.env("VEIL_LOG", "veil=loud"), REFUSED_LIMIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("VEIL_LOG=\"veil=loud\" is not a valid log filter"), "{}", stderr(&out));
}

#[test]
fn bench_refuses_zero_runs_instead_of_reporting_nan() {
    let home = Home::new();
    let out =
        output_within(home.command(env!("CARGO_BIN_EXE_veil")).args(["bench", "--runs", "0"]), CLI_LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid value '0' for '--runs <RUNS>'"), "{}", stderr(&out));
}

#[test]
fn bad_arguments_are_refused_before_any_work() {
    let home = Home::new();
    // An out-of-range --tilt is a usage error (exit status 2), named.
    for tilt in ["1000", "NaN", "-91"] {
        let out = home.veil(&["eval", "--data", "/nowhere", "--tilt", tilt]);
        assert_eq!(out.status.code(), Some(2), "{tilt}: {}", stderr(&out));
        assert!(stderr(&out).contains("between -90 and 90 degrees"), "{}", stderr(&out));
    }
    // So is an --upscale outside 1..=16.
    for upscale in ["0", "17"] {
        let out = home.veil(&["eval", "--data", "/nowhere", "--upscale", upscale]);
        assert_eq!(out.status.code(), Some(2), "{upscale}: {}", stderr(&out));
        assert!(stderr(&out).contains("--upscale <N>"), "{}", stderr(&out));
    }
    // A preview sheet is a PNG: another extension, or a folder, is refused before the photo is read.
    let photo = home.write("p.jpg", "not read");
    std::fs::create_dir_all(home.path().join("x.png")).unwrap();
    for sheet in ["sheet.jpg", home.path().join("x.png").to_str().unwrap()] {
        let out = home.veil(&["preview", photo.to_str().unwrap(), "--out", sheet]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(".png"), "{}", stderr(&out));
    }
    assert!(!home.path().join("sheet.jpg").exists());
    // A service whose veild could not start is not installed.
    let missing = home.path().join("nope.toml");
    let out = home.veil(&["--config", missing.to_str().unwrap(), "service", "install", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("veild would not start with this configuration"), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
    let broken = home.write("broken.toml", "[engine\n");
    let out = home.veil(&["--config", broken.to_str().unwrap(), "service", "install", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

#[test]
fn protect_names_an_out_that_is_a_file() {
    let home = Home::new();
    let file = home.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let photo = home.path().join("p.jpg");
    std::fs::write(&photo, b"x").unwrap();
    let mut cmd = home.command(env!("CARGO_BIN_EXE_veil"));
    cmd.arg("protect").arg("--out").arg(&file).arg(&photo);
    let out = output_within(&mut cmd, CLI_LIMIT);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("{}: not a folder", file.display())), "{}", stderr(&out));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn protect_leaves_a_copy_veild_protected_alone_and_says_whose_copy_it_is() {
    let home = Home::new();
    home.configure("", &[("In", "Out")]);
    let (source, copy) = (home.path().join("In/a.jpg"), home.path().join("Out/a.jpg"));
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::write(&copy, b"protected pixels").unwrap();
    // What veild records once it has protected a face in In/a.jpg.
    let (store, _) = veil::store::Store::open(&home.path().join("state")).unwrap();
    let seen = veil::store::Seen { size: 1, mtime_ns: 1 };
    store.observe(&home.path().join("In"), &source, seen, "h").unwrap();
    let done = veil::store::Finish::Done { output: copy.clone(), faces: 1, seconds: 1.0, losses: vec![] };
    store.finish(&source, &done).unwrap();
    drop(store);
    // Shared from the desktop, then given to `veil protect`.
    let shared = home.path().join("Desktop/shared.jpg");
    std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
    std::fs::copy(&copy, &shared).unwrap();
    let mine = home.path().join("Mine");
    let mut cmd = home.command(env!("CARGO_BIN_EXE_veil"));
    cmd.arg("--config").arg(home.config_path()).args(["protect", "--json", "--out"]).arg(&mine).arg(&shared);
    let o = output_within(&mut cmd, CLI_LIMIT);
    let why = format!(
        "a copy Veil already protected (from {}): protecting it twice would double its noise",
        source.display()
    );
    assert_eq!(o.status.code(), Some(1), "nothing was protected: {}", stderr(&o));
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line, serde_json::json!({"source": shared.to_string_lossy(), "skipped": why}));
    assert!(stderr(&o).contains(&format!("veil: {}: {why}\n", shared.display())), "{}", stderr(&o));
    assert!(!mine.exists());
}

#[test]
fn protect_refuses_an_out_inside_a_watched_folder_but_not_inside_its_output() {
    let home = Home::new();
    home.configure("", &[("In", "In/Protected")]);
    let photo = home.path().join("p.jpg");
    std::fs::write(&photo, b"x").unwrap();
    let run = |out: &Path| {
        let mut cmd = home.command(env!("CARGO_BIN_EXE_veil"));
        cmd.arg("--config").arg(home.config_path()).arg("protect").arg("--out").arg(out).arg(&photo);
        output_within(&mut cmd, CLI_LIMIT)
    };
    let inside = home.path().join("In/mine");
    let o = run(&inside);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("inside the watched folder"), "{}", stderr(&o));
    assert!(!inside.exists());
    // A sub-folder mirrored there is refused the same way, before anything is written.
    let backup = home.path().join("Backup/In");
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::write(backup.join("x.jpg"), b"x").unwrap();
    let mut cmd = home.command(env!("CARGO_BIN_EXE_veil"));
    cmd.arg("--config").arg(home.config_path()).arg("protect").arg("--out").arg(home.path());
    let o = output_within(cmd.arg(home.path().join("Backup")), CLI_LIMIT);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("inside the watched folder"), "{}", stderr(&o));
    assert!(!home.path().join("In/x.jpg").exists());
    // Into the folder's own output (inside it) the copies are left alone: only the photo's own
    // problem is reported.
    let o = run(&home.path().join("In/Protected"));
    assert!(!stderr(&o).contains("inside the watched folder"), "{}", stderr(&o));
}
