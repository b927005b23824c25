//! The shell scripts behind `make run` and `make demo`, run as a newcomer would: in
//! their own process group, so everything they start is stopped with them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{eventually, BIN};

pub struct Script {
    pub child: Child,
    /// The script's stdout and stderr together.
    pub log: PathBuf,
}

impl Script {
    /// `bash <script> <shimmer binary>` in `cwd`, with `env` added.
    pub fn start(script: &Path, cwd: &Path, env: &[(&str, String)], log: PathBuf) -> Script {
        let out = std::fs::File::create(&log).expect("create script log");
        let err = out.try_clone().expect("clone script log");
        let child = Command::new("bash")
            .arg(script)
            .arg(BIN)
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start the script");
        Script { child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the first output line containing `needle`; panics with the output if
    /// the script exits or the deadline passes first.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let found = eventually(super::DEADLINE, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the script exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            self.output()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        });
        found.unwrap_or_else(|| panic!("no line with {needle:?}; output:\n{}", self.output()))
    }

    /// The printed lines that start with `prefix` (leading blanks ignored), in order.
    pub fn printed(&self, prefix: &str) -> Vec<String> {
        self.output()
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // The whole group: the script and every shimmer it started.
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this struct created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Runs a printed shell command line as a newcomer would paste it; its stdout.
pub fn sh(line: &str, cwd: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("run {line:?}: {e}"));
    assert!(
        out.status.success(),
        "{line:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
