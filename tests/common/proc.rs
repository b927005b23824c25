//! Starting and stopping `shimmer` processes: a child killed on drop with its output in
//! a log file, and waits on its listeners and log lines.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{peer_der, tls_connect};
use super::{eventually, BIN};

/// A child process that is killed when dropped, with its output in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let mut cmd = command(args, &log);
        cmd.env("RUST_LOG", "info");
        Proc::start(cmd, log)
    }

    fn start(mut cmd: Command, log: PathBuf) -> Proc {
        let child = cmd.spawn().expect("start shimmer");
        Proc { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Like [`Proc::spawn`], with `prepare` run in the child between fork and exec.
    ///
    /// # Safety
    /// `prepare` may only make async-signal-safe calls (see `CommandExt::pre_exec`).
    unsafe fn spawn_prepared(
        args: &[&str],
        log: PathBuf,
        prepare: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut cmd = command(args, &log);
        cmd.env("RUST_LOG", "info");
        // SAFETY: the caller's promise.
        unsafe { cmd.pre_exec(prepare) };
        Proc::start(cmd, log)
    }

    /// Like [`Proc::spawn`], under a seccomp filter that answers system call `nr` with
    /// `ENOSYS`, as a kernel that predates it does (e.g. `cachestat`, Linux 6.5).
    pub fn spawn_without_syscall(nr: u32, args: &[&str], log: PathBuf) -> Proc {
        let filter = enosys_filter(nr);
        let install = move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: prctl reads the program, the child's copy of the filter built
            // before the fork.
            let failed = unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    ) != 0
            };
            if failed {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: only prctl, which is async-signal-safe.
        unsafe { Proc::spawn_prepared(args, log, install) }
    }

    /// Like [`Proc::spawn`], with the soft limit on open descriptors lowered to `soft`
    /// (the hard one as the test's), as a login shell's 1024 is below its hard limit.
    pub fn spawn_with_soft_open_files(soft: u64, args: &[&str], log: PathBuf) -> Proc {
        let lower = move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit and setrlimit use only the struct they are given.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                lim.rlim_cur = soft.min(lim.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: only getrlimit and setrlimit, which are async-signal-safe.
        unsafe { Proc::spawn_prepared(args, log, lower) }
    }

    /// Like [`Proc::spawn`], but without RUST_LOG, so the config's `log_level` rules.
    pub fn spawn_without_rust_log(args: &[&str], log: PathBuf) -> Proc {
        let mut cmd = command(args, &log);
        cmd.env_remove("RUST_LOG");
        Proc::start(cmd, log)
    }

    /// Waits (bounded) for the process to exit; its exit status, or `None` if it runs on.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        eventually(within, || self.child.try_wait().ok().flatten())
    }
}

/// Waits until something accepts on `addr`, or panics with the process's log (at once
/// when the process has exited, or has logged that another process holds `addr`).
pub fn wait_for_port(proc: &mut Proc, addr: SocketAddr, what: &str) {
    wait_for_listener(proc, addr, what, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Waits until a TLS handshake on `addr` completes (with the certificate `der` when
/// given, so the listener is known to be this process's): a listening socket alone
/// does not say the TLS acceptor behind it is the one the test configured.
pub fn wait_for_tls(proc: &mut Proc, addr: SocketAddr, der: Option<&[u8]>, what: &str) {
    wait_for_listener(proc, addr, what, || {
        tls_connect(addr, None, None).is_ok_and(|s| der.is_none_or(|d| peer_der(&s) == d))
    })
}

fn wait_for_listener(proc: &mut Proc, addr: SocketAddr, what: &str, up: impl Fn() -> bool) {
    let log = proc.log.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !proc.is_running() {
            panic!(
                "{what} exited before listening on {addr}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        // Pingora retries a bind that finds the address taken; meanwhile whatever holds
        // it would answer this test.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!("{addr} is in use")) {
            panic!("{what}: another process holds {addr}; its log:\n{text}");
        }
        if up() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on {addr}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Waits up to `timeout` for a line containing `needle` in the process's log.
pub fn wait_for_log(proc: &Proc, needle: &str, timeout: Duration) -> Option<String> {
    eventually(timeout, || {
        let text = proc.log_text();
        text.lines().find(|l| l.contains(needle)).map(str::to_owned)
    })
}

/// `shimmer ARGS`, its output (both streams) to `log`, no input.
fn command(args: &[&str], log: &std::path::Path) -> Command {
    let out = std::fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    cmd
}

/// A classic-BPF seccomp program: system call `nr` of this architecture fails with
/// `ENOSYS`, everything else is allowed.
fn enosys_filter(nr: u32) -> Vec<libc::sock_filter> {
    use libc::{seccomp_data, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // <linux/audit.h>; libc has no AUDIT_ARCH_* constants.
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    let load = |offset: usize| libc::sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset as u32,
    };
    let jump_if = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| libc::sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        load(std::mem::offset_of!(seccomp_data, arch)),
        jump_if(AUDIT_ARCH, 0, 3), // another architecture's numbers: allow
        load(std::mem::offset_of!(seccomp_data, nr)),
        jump_if(nr, 0, 1),
        ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ret(libc::SECCOMP_RET_ALLOW),
    ]
}
