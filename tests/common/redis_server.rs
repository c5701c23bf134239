//! A private redis-server on a free port of 127.0.0.1, for tests that must
//! stop, pause and restart it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// With persistence: AOF with `appendfsync always`, in this directory.
    aof_dir: Option<PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// A server without persistence: a restart loses everything.
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            aof_dir: None,
        };
        server.restart();
        server
    }

    /// A server without persistence on this port.
    pub fn start_on(port: u16) -> Self {
        let mut server = Self {
            port,
            child: None,
            aof_dir: None,
        };
        server.restart();
        server
    }

    /// A server with AOF persistence and `appendfsync always`.
    pub fn start_persistent() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("cariosan-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            child: None,
            aof_dir: Some(dir),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""]);
        match &self.aof_dir {
            Some(dir) => {
                command
                    .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                    .arg(dir);
            }
            None => {
                command.args(["--appendonly", "no"]);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (.ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                // Answers PING once it has loaded its data.
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                if stream.write_all(b"PING\r\n").is_ok() {
                    let mut reply = [0u8; 7];
                    if stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
                        break;
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL): an outage, and without persistence a
    /// loss of every key.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A graceful shutdown (SIGTERM): Redis flushes its AOF and exits.
    pub fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    fn signal(&self, child: &Child, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGSTOP: Redis stops answering, and its keys' time runs on.
    pub fn pause(&self) {
        self.signal(self.child.as_ref().expect("running"), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(self.child.as_ref().expect("running"), "CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            self.signal(child, "CONT");
        }
        self.stop();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
