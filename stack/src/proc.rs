//! Child processes, each started in a session of its own (so its own process group), and
//! stopped as a whole: SIGTERM to the group, a bounded wait, then SIGKILL to every process left
//! in the session, whatever group it moved to (`func-e run` puts Envoy in a group of its own).
//! Bounded waits on a condition, for everything that has to become ready.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a stopped process may take to exit after SIGTERM before its session is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a condition is checked.
pub const POLL: Duration = Duration::from_millis(20);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Marks the process as told to stop (from a signal handler: a single atomic store). Every
/// [`wait_for`] then gives up at once.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

extern "C" fn on_signal(_signal: libc::c_int) {
    interrupt();
}

/// Makes SIGINT, SIGTERM and SIGHUP call [`interrupt`], so that every [`wait_for`] gives up and
/// the program can stop its children itself (`stack up`, `soak`).
pub fn install_signal_handlers() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; the struct is fully initialised.
        let failed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut()) != 0
        };
        if failed {
            return Err(format!(
                "cannot handle signal {signal}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Calls `check` every [`POLL`] until it returns `Some`, for at most `deadline` (less if the
/// process is [`interrupted`]).
pub fn wait_for<T>(deadline: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll(deadline, true, check)
}

fn poll<T>(
    deadline: Duration,
    heed_interrupt: bool,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() >= deadline || (heed_interrupt && interrupted()) {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// How to start a process.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Where stdout and stderr go; `None`: inherited.
    pub log: Option<PathBuf>,
    /// Ask the kernel to SIGKILL the process when the thread that started it ends (use it only
    /// from a thread that lives as long as the process should, such as `main`).
    pub die_with_parent: bool,
}

/// A child process in its own session; stopped (with its whole session) when dropped.
#[derive(Debug)]
pub struct Proc {
    /// A name for messages.
    pub name: String,
    child: Option<Child>,
    pid: u32,
    /// Its log (stdout and stderr), if it has one.
    pub log: Option<PathBuf>,
}

impl Proc {
    /// Starts `cmd` in a new session.
    pub fn spawn(name: &str, mut cmd: Command, options: &SpawnOptions) -> Result<Proc, String> {
        cmd.stdin(Stdio::null());
        if let Some(log) = &options.log {
            let out = fs::File::create(log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            let err = out
                .try_clone()
                .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        }
        let die_with_parent = options.die_with_parent;
        // SAFETY: getpid before the fork; only async-signal-safe calls (setsid, prctl, getppid)
        // between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if die_with_parent {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have gone before prctl: then nobody would stop us.
                    if libc::getppid() != parent {
                        return Err(std::io::Error::other("parent gone"));
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: options.log.clone(),
        })
    }

    /// Process id, which is also its session and process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether it was stopped or has exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// The whole log ("" without one).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| fs::read(l).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The log's last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// Stops it and everything in its session; waits at most [`STOP_GRACE`] before SIGKILL.
    pub fn stop(&mut self) {
        self.stop_within(STOP_GRACE);
    }

    /// Stops it: SIGTERM to its process group, up to `grace` for it to exit, then SIGKILL to
    /// every process still in its session. Idempotent.
    pub fn stop_within(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = self.pid;
        signal_group(group, libc::SIGTERM);
        // A stop is graceful even when the process was interrupted.
        let _ = poll(grace, false, || child.try_wait().ok().flatten());
        // The leader may be gone while the rest of its session is not (a wrapper such as
        // `func-e run` killed, or a child that changed process group).
        signal_group(group, libc::SIGKILL);
        kill_session(group);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(group: u32, signal: libc::c_int) {
    if let Ok(pgid) = libc::pid_t::try_from(group) {
        if pgid > 1 {
            // SAFETY: a plain system call; a missing group is ESRCH, ignored.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }
}

fn signal_process(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 1 {
            // SAFETY: a plain system call; a missing process is ESRCH, ignored.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// Sends SIGTERM to one process.
pub fn terminate(pid: u32) {
    signal_process(pid, libc::SIGTERM);
}

/// Sends SIGKILL to one process.
pub fn kill_now(pid: u32) {
    signal_process(pid, libc::SIGKILL);
}

/// SIGKILLs every live process whose session is `session` (Linux `/proc`).
pub fn kill_session(session: u32) {
    for pid in session_members(session) {
        kill_now(pid);
    }
}

/// Live (not zombie) processes of session `session`.
pub fn session_members(session: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_stat(*pid).is_some_and(|(state, sid)| sid == session && state != 'Z'))
        .collect()
}

/// State and session of a process, from `/proc/PID/stat`.
fn process_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

/// Process group of a process, from `/proc/PID/stat`.
#[cfg(test)]
fn process_group(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    process_stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader never sees
/// half of it.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, contents).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stack-proc-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_child_runs_in_its_own_session_and_logs() {
        let dir = temp_dir("session");
        let log = dir.join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; exec sleep 1000"]);
        let mut p = Proc::spawn(
            "sh",
            cmd,
            &SpawnOptions {
                log: Some(log),
                die_with_parent: false,
            },
        )
        .expect("spawn");
        let pid = p.pid();
        assert_eq!(process_stat(pid).map(|(_, sid)| sid), Some(pid));
        assert!(wait_for(Duration::from_secs(10), || p
            .log_text()
            .contains("hello")
            .then_some(()))
        .is_some());
        assert!(p.is_running());
        p.stop();
        assert!(!alive(pid));
        assert!(!p.is_running());
        let _ = fs::remove_dir_all(&dir);
    }

    /// A wrapper that puts its child in another process group and ignores SIGTERM (as a
    /// supervisor like `func-e run` may): the child is still stopped, through its session.
    #[test]
    fn the_whole_session_is_stopped_even_in_another_group() {
        let dir = temp_dir("group");
        let pid_file = dir.join("child.pid");
        // The child moves to a process group of its own, within the session.
        let script = format!(
            "trap '' TERM; python3 -c 'import os, time; os.setpgid(0, 0); time.sleep(1000)' & \
             echo $! > '{}'; wait",
            pid_file.display()
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let mut p = Proc::spawn("wrapper", cmd, &SpawnOptions::default()).expect("spawn");
        let child: u32 = wait_for(Duration::from_secs(10), || {
            fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        })
        .expect("the wrapper started its child");
        assert!(alive(child));
        assert_eq!(process_stat(child).map(|(_, sid)| sid), Some(p.pid()));
        assert!(
            wait_for(Duration::from_secs(10), || (process_group(child)? == child)
                .then_some(()))
            .is_some(),
            "the child did not move to a group of its own"
        );
        p.stop_within(Duration::from_millis(200));
        assert!(
            wait_for(Duration::from_secs(5), || (!alive(child)).then_some(())).is_some(),
            "the child of another group survived"
        );
        assert!(session_members(p.pid()).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn wait_for_is_bounded() {
        let start = Instant::now();
        assert_eq!(wait_for(Duration::from_millis(100), || None::<()>), None);
        assert!(start.elapsed() < Duration::from_secs(5));
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
    }

    #[test]
    fn files_are_written_whole() {
        let dir = temp_dir("atomic");
        let path = dir.join("state.json");
        write_atomically(&path, "{}").expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "{}");
        let _ = fs::remove_dir_all(&dir);
    }
}
