//! The sandbox a document's examples run in: a temporary directory (the working
//! directory of every block), `tally` on PATH, and when the document needs one, a
//! `tally up --dev` stack on ephemeral loopback ports whose data directory is
//! `./tally-data` in the sandbox (the default, so `tally sql` etc. find it unchanged).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The built binary under test.
pub(crate) const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// Admin token of `tally up --dev`.
pub(crate) const DEV_ADMIN: &str = "dev-admin";

/// Environment variables a block must not inherit from the test process: they would
/// point tally at another configuration, or give it real provider credentials.
const SCRUBBED: &[&str] = &[
    "TALLY_CONFIG",
    "TALLY_DATA_DIR",
    "TALLY_TOKEN",
    "TALLY_DEV",
    "TALLY_LISTEN",
    "TALLY_ADMIN_LISTEN",
    "TALLY_POSTGRES_LISTEN",
    "TALLY_SIMULATOR_LISTEN",
    "TALLY_EXPORT_PRICING",
    "TALLY_RECONCILE_BASE_URL",
    "TALLY_LOG_FORMAT",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "OPENAI_ADMIN_KEY",
    "ANTHROPIC_ADMIN_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_BASE_URL",
    "PGPASSWORD",
    "PGHOST",
    "PGPORT",
];

/// A running `tally up --dev`.
#[derive(Debug)]
pub(crate) struct Stack {
    child: Child,
    /// `127.0.0.1:<port>` of each listener.
    pub(crate) proxy: String,
    pub(crate) admin: String,
    pub(crate) postgres: String,
    pub(crate) simulator: String,
    pub(crate) log_file: PathBuf,
}

impl Drop for Stack {
    fn drop(&mut self) {
        kill_group(&self.child);
        let _ = self.child.wait();
    }
}

/// One document's sandbox.
#[derive(Debug)]
pub(crate) struct Sandbox {
    tmp: tempfile::TempDir,
    pub(crate) stack: Option<Stack>,
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Ran {
    /// `None` when it was killed at the deadline.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ran {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            match self.status {
                Some(s) => s.to_string(),
                None => "killed at the deadline".to_owned(),
            },
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

fn tail(s: &str) -> &str {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        return s;
    }
    let mut i = s.len() - MAX;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn kill_group(child: &Child) {
    // Every child runs in its own process group (`process_group(0)`): end the group
    // (while its leader is alive, so the id is still ours), so that a block's children
    // die with it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// Run `cmd` to completion or until `timeout`, output captured through files (no pipe can
/// fill up and block it).
pub(crate) fn run(cmd: &mut Command, timeout: Duration, scratch: &Path) -> Ran {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            kill_group(&child);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        status,
        stdout: String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()).into(),
        stderr: String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default()).into(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Sandbox {
    /// A temporary directory with `bin/tally` (a symlink to the binary under test).
    pub(crate) fn new() -> Sandbox {
        // TALLY_DOCS_KEEP=1 keeps the sandboxes for a look after a failure.
        let keep = std::env::var_os("TALLY_DOCS_KEEP").is_some();
        let tmp = tempfile::Builder::new()
            .prefix("tally-docs-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("tempdir");
        if keep {
            eprintln!("sandbox kept: {}", tmp.path().display());
        }
        let bin = tmp.path().join(".harness/bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::os::unix::fs::symlink(TALLY, bin.join("tally")).expect("symlink tally");
        Sandbox { tmp, stack: None }
    }

    pub(crate) fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Where the harness keeps its own files (out of the blocks' way).
    pub(crate) fn harness_dir(&self) -> PathBuf {
        self.tmp.path().join(".harness")
    }

    /// A command with the sandbox's environment, run in the sandbox directory.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        for v in SCRUBBED {
            c.env_remove(v);
        }
        let path = std::env::var("PATH").unwrap_or_default();
        c.current_dir(self.dir())
            .env(
                "PATH",
                format!("{}:{path}", self.harness_dir().join("bin").display()),
            )
            .env("TALLY_LOG_FILTER", "warn")
            .env("NO_COLOR", "1")
            // Nothing here may leave the machine: HTTP clients that honour proxy
            // variables fail fast instead of reaching the internet.
            .env("http_proxy", "http://127.0.0.1:9")
            .env("https_proxy", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("NO_PROXY", "127.0.0.1,localhost");
        if let Some(s) = &self.stack {
            // Provider admin APIs (`tally reconcile --pull`) are the stack's simulator.
            c.env(
                "TALLY_RECONCILE_BASE_URL",
                format!("http://{}", s.simulator),
            )
            .env("OPENAI_ADMIN_KEY", "sk-admin-docs-example")
            .env("ANTHROPIC_ADMIN_KEY", "sk-ant-admin-docs-example");
        }
        c
    }

    /// `tally <args>` in the sandbox.
    pub(crate) fn tally(&self, args: &[&str]) -> Ran {
        let scratch = self.harness_dir();
        run(
            self.command(TALLY).args(args),
            Duration::from_secs(60),
            &scratch,
        )
    }

    /// Start `tally up --dev` with `config` (written to `.harness/stack.yaml`).
    pub(crate) fn start_stack(&mut self, config: &str) {
        let cfg = self.harness_dir().join("stack.yaml");
        std::fs::write(&cfg, config).expect("write stack config");
        let mut last_err = String::new();
        // The simulator's port is picked here and handed over (`--simulator-listen`), so
        // the harness knows it; if another process takes it in between, try again.
        for _ in 0..3 {
            match self.try_start(&cfg) {
                Ok(stack) => {
                    self.stack = Some(stack);
                    return;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("tally up --dev did not start: {last_err}");
    }

    fn try_start(&self, cfg: &Path) -> Result<Stack, String> {
        let simulator = format!("127.0.0.1:{}", free_port());
        let log_file = self.harness_dir().join("stack.log");
        let log = std::fs::File::create(&log_file).expect("stack log");
        let mut child = self
            .command(TALLY)
            .args([
                "up",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--postgres-listen",
                "127.0.0.1:0",
                "--drain-seconds",
                "1",
                "--simulator-listen",
                &simulator,
                "--data-dir",
                "./tally-data",
                "--config",
            ])
            .arg(cfg)
            .env("TALLY_LOG_FILTER", "warn,tally=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn tally up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut proxy, mut admin, mut postgres) = (None, None, None);
        let addr = |s: &str| {
            s.trim()
                .trim_start_matches("http://")
                .split_whitespace()
                .next()
                .map(str::to_owned)
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("tally proxy listening on ") {
                        proxy = addr(a);
                    } else if let Some(a) = line.strip_prefix("tally admin API on ") {
                        admin = addr(a);
                    } else if let Some(a) = line.strip_prefix("tally postgres wire on ") {
                        postgres = addr(a);
                    } else if line.starts_with("  health:") {
                        break;
                    }
                }
                Err(_) => {
                    kill_group(&child);
                    let _ = child.wait();
                    return Err(std::fs::read_to_string(&log_file).unwrap_or_default());
                }
            }
        }
        let stack = Stack {
            child,
            proxy: proxy.ok_or("no proxy address printed")?,
            admin: admin.ok_or("no admin address printed")?,
            postgres: postgres.ok_or("no postgres address printed")?,
            simulator,
            log_file,
        };
        Ok(stack)
    }
}

impl Stack {
    /// The last lines of the stack's own log (stderr), for failure messages.
    pub(crate) fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Rewrite the documented default addresses to this stack's.
    pub(crate) fn localize(&self, text: &str) -> String {
        let pg_port = self.postgres.rsplit(':').next().unwrap_or_default();
        let mut t = text.to_owned();
        for host in ["127.0.0.1", "localhost"] {
            t = t
                .replace(&format!("{host}:8080"), &self.proxy)
                .replace(&format!("{host}:8081"), &self.admin)
                .replace(&format!("{host}:5433"), &self.postgres)
                .replace(&format!("{host}:9090"), &self.simulator);
        }
        t.replace("port=5433", &format!("port={pg_port}"))
            .replace("-p 5433", &format!("-p {pg_port}"))
    }
}
