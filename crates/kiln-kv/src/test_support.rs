//! A throwaway `redis-server` for tests, on a free 127.0.0.1 port with persistence off.
//!
//! Enabled by the `test-support` feature, so other crates' tests can use it as a
//! dev-dependency feature. `redis-server` must be on PATH; `scripts/install-build-deps.sh`
//! installs it on Debian.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Maximum time a started server may take to reply to PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server` child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    log_path: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it replies to PING.
    pub fn start() -> io::Result<RedisServer> {
        let port = free_port()?;
        let log_path =
            std::env::temp_dir().join(format!("kiln-kv-redis-{}-{port}.log", std::process::id()));
        let mut server = RedisServer {
            port,
            child: None,
            log_path,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Returns the server's URL, `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the server's process id, or `None` while it is stopped. Tests can send it
    /// SIGSTOP to make the server hang without closing its connections.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, like a crash). Its data is lost, because persistence is off.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child may already have exited; then there is nothing to kill.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts a new, empty one on the same port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                if error.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "redis-server was not found on PATH; run scripts/install-build-deps.sh \
                         to install it",
                    )
                } else {
                    io::Error::new(error.kind(), format!("cannot start redis-server: {error}"))
                }
            })?;
        self.child = Some(child);
        self.wait_until_ready()
    }

    fn wait_until_ready(&mut self) -> io::Result<()> {
        let started = Instant::now();
        loop {
            if ping(self.port).is_ok() {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?.is_some(),
                None => true,
            };
            if exited || started.elapsed() > STARTUP_TIMEOUT {
                self.stop();
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "redis-server on port {} did not answer PING; its log {}:\n{log}",
                    self.port,
                    self.log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Returns a port that was free a moment ago. Another process may take it before the server
/// binds it; the server then fails to start with a message in its log.
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn ping(port: u16) -> io::Result<()> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(io::Error::other("unexpected PING reply"))
    }
}
