//! A real `nats-server` for tests: one per test, on a port the server chose
//! itself (`-p -1`), with a temporary store. Killed on drop.
//!
//! Why the server picks its port: tests run in parallel, and a port probed
//! free by one test can be taken by another before its server binds it. Two
//! servers told the same port leave one of them exited and both tests talking
//! to the survivor. Here the server binds port 0 and writes the port it got to
//! a ports file (`--ports_file_dir`), which is read back; a restart asks for
//! the same port again and fails loudly if it is gone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to report its ports.
const START_WITHIN: Duration = Duration::from_secs(20);

/// Finds nats-server 2.10+: `NATS_SERVER_BIN`, then the one `scripts/test`
/// installs under `.tools/`, then `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A port the system reports free now. Only for ports a server cannot pick
/// itself (a cluster's route ports, which the other servers must know in
/// advance); use [`Spawn::start`]'s error to retry when one was taken.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// What to start: the arguments after the binary, apart from `-p`, `-sd` and
/// `--ports_file_dir`, which [`Spawn::start`] adds.
#[derive(Clone, Debug, Default)]
pub struct Spawn {
    /// A configuration file (`-c`), if any.
    pub conf: Option<PathBuf>,
    /// More arguments (e.g. `-js`, `--cluster URL`).
    pub args: Vec<String>,
    /// Added to the server's environment (for the `$VARIABLE`s a file names).
    pub envs: Vec<(String, String)>,
}

/// Why a server did not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Spawn {
    /// The plain JetStream server most tests use: `-js -a 127.0.0.1`.
    pub fn jetstream() -> Spawn {
        Spawn {
            args: vec!["-js".into(), "-a".into(), "127.0.0.1".into()],
            ..Spawn::default()
        }
    }

    /// A server from a configuration file, on loopback.
    pub fn config(conf: &Path, envs: &[(&str, &str)]) -> Spawn {
        Spawn {
            conf: Some(conf.to_owned()),
            args: vec!["-a".into(), "127.0.0.1".into()],
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Starts the server over `store` on `port` (`None`: a port it picks),
    /// and waits until it reports its client port and accepts connections.
    /// Its log is appended to `nats-server.log` in the store directory.
    pub fn start(&self, store: tempfile::TempDir, port: Option<u16>) -> Result<Nats, StartError> {
        let bin = nats_server_bin();
        let ports_dir = tempfile::tempdir().expect("temp dir for the ports file");
        let log_path = store.path().join("nats-server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log file");
        let mut command = Command::new(&bin);
        if let Some(conf) = &self.conf {
            command.arg("-c").arg(conf);
        }
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = command
            .args(&self.args)
            .args(["-p", &port_arg, "-sd"])
            .arg(store.path())
            .arg("--ports_file_dir")
            .arg(ports_dir.path())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; run scripts/test (it installs nats-server) or set NATS_SERVER_BIN",
                    bin.display()
                )
            });
        let started = Instant::now();
        let port = loop {
            if let Some(port) = reported_port(ports_dir.path(), child.id()) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError(format!(
                    "nats-server exited at start-up ({status}); its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            if started.elapsed() > START_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError(format!(
                    "nats-server reported no port within {START_WITHIN:?}; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > START_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError(format!(
                    "nats-server reported port {port} but does not accept connections on it"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Nats {
            child,
            port,
            store,
            spawn: self.clone(),
        })
    }
}

/// The client port in the ports file of the server with process id `pid`
/// (`{"nats":["nats://127.0.0.1:PORT"], ...}`), once it is written.
fn reported_port(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A running nats-server. Killed (SIGKILL) on drop.
pub struct Nats {
    child: Child,
    /// Its client port.
    pub port: u16,
    /// Its store directory (`-sd`), which also holds `nats-server.log`.
    pub store: tempfile::TempDir,
    spawn: Spawn,
}

impl Nats {
    /// A plain JetStream server with a new temporary store.
    pub fn start() -> Nats {
        Self::start_with_store(tempfile::tempdir().expect("temp dir"), None)
    }

    /// A plain JetStream server over `store`, on `port` when given (for a
    /// restart: clients reconnect to the same address).
    pub fn start_with_store(store: tempfile::TempDir, port: Option<u16>) -> Nats {
        Spawn::jetstream()
            .start(store, port)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A server from a configuration file with a new temporary store, with
    /// `envs` added to its environment. A server that exits at start-up
    /// fails the test with its log.
    pub fn start_with_config(conf: &Path, envs: &[(&str, &str)]) -> Nats {
        Spawn::config(conf, envs)
            .start(tempfile::tempdir().expect("temp dir"), None)
            .unwrap_or_else(|e| panic!("nats-server -c {}: {e}", conf.display()))
    }

    /// The server stopped by [`Nats::stop`] started again the same way, over
    /// its store and on its port.
    pub fn restart(stopped: Stopped) -> Nats {
        let Stopped { spawn, store, port } = stopped;
        spawn
            .start(store, Some(port))
            .unwrap_or_else(|e| panic!("restarting nats-server on port {port}: {e}"))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (for `kill -9` from a test).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Whether the process has exited (e.g. killed from outside).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills the server (SIGKILL, as `kill -9`: it gets no chance to sync)
    /// and hands back what a restart needs.
    pub fn stop(mut self) -> Stopped {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let store = std::mem::replace(&mut self.store, tempfile::tempdir().expect("temp dir"));
        Stopped {
            spawn: self.spawn.clone(),
            store,
            port: self.port,
        }
    }

    /// A new client connection with a JetStream context.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to nats");
        async_nats::jetstream::new(client)
    }

    /// The files under the store directory whose bytes contain `needle`.
    pub fn files_containing(&self, needle: &[u8]) -> Vec<PathBuf> {
        files_containing(self.store.path(), needle)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server killed by [`Nats::stop`]: its store, port and how it was started.
pub struct Stopped {
    spawn: Spawn,
    /// Its store directory, as the server left it.
    pub store: tempfile::TempDir,
    /// The client port it had.
    pub port: u16,
}

/// The files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && !needle.is_empty()
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Where [`fault_test`] collects its lines: `target/fault-tests.txt` of the
/// workspace, or `LIANXI_FAULT_REPORT`. `scripts/test` empties it before
/// the run and prints it after, so the CI log shows what each fault test
/// did and counted (cargo captures a passing test's own output).
pub fn fault_report_path() -> PathBuf {
    std::env::var_os("LIANXI_FAULT_REPORT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fault-tests.txt"),
        PathBuf::from,
    )
}

/// Reports what a fault test did and checked: one line, which must start
/// with `FAULT-TEST <test name>:`, printed and appended to
/// [`fault_report_path`] (one write, so lines of parallel tests do not mix).
pub fn fault_test(line: impl AsRef<str>) {
    use std::io::Write;
    let line = line.as_ref();
    assert!(
        line.starts_with("FAULT-TEST "),
        "a fault test's line starts with FAULT-TEST <name>: {line}"
    );
    println!("{line}");
    let path = fault_report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_started_at_once_get_two_ports_and_a_restart_keeps_its_port() {
        let servers: Vec<Nats> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(Nats::start)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ports: Vec<u16> = servers.iter().map(|n| n.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4, "each server has its own port");
        let mut servers = servers.into_iter();
        let first = servers.next().unwrap();
        let port = first.port;
        let mut again = Nats::restart(first.stop());
        assert_eq!(again.port, port);
        assert!(!again.exited());
        assert!(again.log().contains("Server is ready"));
    }

    #[test]
    fn a_taken_port_is_a_start_error_with_the_log() {
        let first = Nats::start();
        let err = Spawn::jetstream()
            .start(tempfile::tempdir().unwrap(), Some(first.port))
            .err()
            .expect("a second server on a taken port does not start");
        assert!(err.0.contains("exited at start-up"), "{err}");
        assert!(err.0.contains("address already in use"), "{err}");
    }
}
