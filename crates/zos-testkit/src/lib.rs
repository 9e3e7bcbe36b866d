//! The one skip guard for zos tests that need root or a host program.
//!
//! A test asks [`is_root`], [`have`] or [`program`] (or calls [`skip`] for any other missing
//! prerequisite) and returns early when told no. Under `CI=true` a missing prerequisite fails
//! the test instead, so CI never passes on tests that did not run. Elsewhere the skip is
//! printed (to the real stderr, past the test harness's capture) and, when `ZOS_TEST_SKIPS`
//! names a file, appended to it as one line `binary<TAB>test<TAB>reason`, so `scripts/test`
//! can count skipped tests apart from passed ones.

mod server;
pub use server::{free_port, http_server, wait_until, Server};

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable naming the file skips are recorded in (set by `scripts/test`).
pub const SKIP_LOG_VAR: &str = "ZOS_TEST_SKIPS";

/// Directories searched after `PATH`: Debian keeps `mkfs.*`, `fsck.*` and friends in sbin,
/// which is not on a normal user's `PATH`.
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Whether this test run is CI's (`CI=true`), where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Records that the calling test cannot check what it should, and why (say what to do about
/// it, too): under CI this panics, failing the test; elsewhere it prints and records the skip,
/// and the test should return.
#[track_caller]
pub fn skip(why: &str) {
    let test = current_test();
    if under_ci() {
        panic!("{test} cannot run: {why}. Under CI=true nothing may be skipped");
    }
    let binary = current_binary();
    // Straight to the process's stderr: eprintln! output of a passing test is swallowed by the
    // harness, and a skip must be seen.
    let _ = writeln!(std::io::stderr().lock(), "SKIP {binary}::{test}: {why}");
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR) {
        record(Path::new(&log), &format!("{binary}\t{test}\t{why}\n"));
    }
}

/// Whether the test runs as root (device nodes, ownership, mounts and VMs need it); skips
/// through [`skip`] when not.
#[track_caller]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip("needs root: run the tests as root");
    }
    root
}

/// Whether `name` is an installed program (see [`program`]); skips through [`skip`] when not.
#[track_caller]
pub fn have(name: &str) -> bool {
    program(name).is_some()
}

/// The path of the program `name`, looked up on `PATH` then in `/usr/sbin` and `/sbin`; skips
/// through [`skip`] and returns `None` when it is not installed.
#[track_caller]
pub fn program(name: &str) -> Option<PathBuf> {
    let found = find(name, std::env::var_os("PATH"));
    if found.is_none() {
        skip(&format!("{name} is not installed: run scripts/setup"));
    }
    found
}

/// `name` on `path` (a `PATH` value) or in the sbin dirs, if it is an executable file there.
fn find(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The running test's name: libtest runs each test on a thread named after it.
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned()
}

/// The test binary's name without cargo's hash suffix (`vm_kernel-0a1b…` → `vm_kernel`), so
/// two binaries' tests of the same name stay apart in the record.
fn current_binary() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// Appends one line to the skip record. One `write` on an `O_APPEND` file, so lines from test
/// binaries running at the same time do not interleave.
fn record(log: &Path, line: &str) {
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        let _ = writeln!(
            std::io::stderr().lock(),
            "could not record the skip in {} ({SKIP_LOG_VAR}): {e}",
            log.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_in_sbin() {
        assert!(find("sh", Some("/usr/bin:/bin".into())).is_some());
        assert!(find("no-such-program-zos", Some("/usr/bin".into())).is_none());
        // Relative PATH entries are ignored: a test must not run what sits in its cwd.
        assert!(find("Cargo.toml", Some(".".into())).is_none());
    }

    #[test]
    fn records_append_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        record(&log, "a\tb\tc\n");
        record(&log, "d\te\tf\n");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\tb\tc\nd\te\tf\n");
    }

    #[test]
    fn the_test_name_is_the_thread_name() {
        assert_eq!(current_test(), "tests::the_test_name_is_the_thread_name");
        assert_eq!(current_binary(), "zos_testkit");
    }
}
