//! A private PostgreSQL cluster in a temporary directory, on a free port of
//! 127.0.0.1, for tests that must stop and restart it. Debian's `initdb`
//! and `pg_ctl` (under `/usr/lib/postgresql/<version>/bin`) run as an
//! unprivileged user, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The unprivileged user the cluster runs as when the tests run as root.
const USER: &str = "cariosan_pg";

pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_user: Option<&'static str>,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("PostgreSQL's initdb under /usr/lib/postgresql/<version>/bin: install postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Creates the user once per test process: tests that start clusters at
/// once must not chown to a user another is still creating.
fn ensure_user() {
    static CREATED: std::sync::Once = std::sync::Once::new();
    CREATED.call_once(create_user);
}

fn create_user() {
    let exists = Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        // Two tests may race to create it; either way it exists after.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status();
    }
}

impl PostgresServer {
    /// A fresh cluster, started and accepting connections.
    pub fn start() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "cariosan-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_user = is_root().then_some(USER);
        if as_user.is_some() {
            ensure_user();
            let status = Command::new("chown")
                .args(["-R", USER])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let server = Self {
            port,
            dir,
            bin: bin_dir(),
            as_user,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// `tool` of the cluster's PostgreSQL, as the cluster's user.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let output = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `pg_dump --data-only` of `schema`: every row as the dump holds it
    /// (`bytea` as hex), for tests that check what the tables keep.
    pub fn dump_data(&self, schema: &str) -> String {
        let port = self.port.to_string();
        let output = self
            .command("pg_dump")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "--data-only",
            ])
            .args(["--schema", schema, "postgres"])
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("pg_dump: {e}"));
        assert!(
            output.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("a dump is text")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped cluster on the same port, and waits until it
    /// accepts connections.
    pub fn start_again(&self) {
        // Extra server options, for a bench that profiles the server.
        let extra = std::env::var("CARIOSAN_PG_OPTIONS").unwrap_or_default();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 {extra}",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fast shutdown: open transactions are rolled back, clients
    /// disconnected.
    pub fn stop_fast(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// The benches include this file too: they always have the library's
// `postgres`, but no feature of that name of their own.
#[allow(unexpected_cfgs)]
impl PostgresServer {
    /// A pool of `size` connections to the cluster. Only where the crate's
    /// feature `postgres` is on; the benches, which include this file too,
    /// always have it but know no such feature of their own.
    #[cfg(feature = "postgres")]
    pub async fn pool(&self, size: u32) -> cariosan_webhooks::store::postgres::sqlx::PgPool {
        cariosan_webhooks::store::postgres::sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&self.url())
            .await
            .unwrap()
    }
}
