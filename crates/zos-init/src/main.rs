//! `zos-init`: PID 1 of a zos container micro-VM.
//!
//! It mounts the container's virtio-fs root, runs the configured process in it, and when that
//! ends writes an [`ExitReport`] to the host and powers off. Every path ends in power-off:
//! PID 1 exiting would panic the kernel.
//!
//! `no_main`: Rust's usual startup aborts when fds 0-2 are closed and /dev/null cannot be
//! opened, which is exactly the state of an initramfs without /dev/console.
#![cfg_attr(not(test), no_main)]
// Unit tests get the test harness's entry point instead, which leaves init's code unreachable.
#![cfg_attr(test, allow(dead_code))]

mod exec;
mod net;
mod session;
mod setup;
mod shutdown;
mod supervise;
mod sys;
mod user;

use shutdown::console_error;
use zos_init::ExitReport;

/// The C entry point (see the crate docs for why not `fn main`); tests use their own.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        // Anywhere else it would take over the machine: kill(-1), mounts, power-off.
        console_error("must run as PID 1 of a zos VM");
        return 1;
    }
    // Before any thread exists, so that every thread inherits the mask.
    sys::block_signals();
    let report = std::panic::catch_unwind(run).unwrap_or_else(|_| ExitReport {
        code: 125,
        error: Some("zos-init crashed (see the console)".into()),
    });
    shutdown::finish(&report)
}

/// Sets the guest up and runs the process; the report says how it went.
fn run() -> ExitReport {
    let failed = |code: i32, error: String| {
        console_error(&error);
        ExitReport {
            code,
            error: Some(error),
        }
    };
    let config = match setup::setup() {
        Ok(config) => config,
        Err(e) => return failed(125, e),
    };
    let main = supervise::MainProcess::new(&config);
    let sessions = supervise::start_control(&main);
    let started = match (config.attach, &sessions) {
        (Some(attach), Some(sessions)) => sessions.attach(attach, &config.process),
        _ => exec::spawn(&config.process, exec::Stdio::Console),
    };
    let pid = match started {
        Ok(pid) => pid,
        Err(report) => return failed(report.code, report.error.unwrap_or_default()),
    };
    let code = supervise::run(main, pid, &config);
    if let Some(sessions) = &sessions {
        sessions.drain_attached(std::time::Duration::from_secs(2));
    }
    ExitReport { code, error: None }
}
