//! Thin safe wrappers over the few system calls init needs that std does not offer.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Signals init forwards to the container's process.
pub const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// A C string from a path, refusing interior NUL bytes.
pub fn cpath(path: impl AsRef<Path>) -> io::Result<CString> {
    CString::new(path.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2); `fstype` and `data` may be absent (e.g. for `MS_MOVE`).
pub fn mount(
    source: &str,
    target: impl AsRef<Path>,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = cpath(source)?;
    let target = cpath(target)?;
    let fstype = fstype.map(cpath).transpose()?;
    let data = data.map(cpath).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is either null (allowed for fstype and data) or a NUL-terminated
    // string that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// umount2(2).
pub fn umount(target: impl AsRef<Path>, flags: libc::c_int) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) })
}

/// chroot(2).
pub fn chroot(path: impl AsRef<Path>) -> io::Result<()> {
    let path = cpath(path)?;
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::chroot(path.as_ptr()) })
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Loads a kernel module from a file; a module already loaded is fine.
pub fn load_module(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: finit_module takes an open fd, a NUL-terminated parameter string and flags.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EEXIST) {
            return Err(err);
        }
    }
    Ok(())
}

/// kill(2).
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    check(unsafe { libc::kill(pid, signal) })
}

/// What a non-blocking waitpid(-1) found.
pub enum Reaped {
    /// A child ended with this wait status.
    Child(libc::pid_t, libc::c_int),
    /// Children exist but none has ended.
    Running,
    /// No children are left.
    None,
}

/// Reaps one ended child, if any, without blocking.
pub fn reap_one() -> Reaped {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid place for waitpid to write to.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Reaped::Running,
            p if p > 0 => return Reaped::Child(p, status),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            _ => return Reaped::None,
        }
    }
}

/// Exit code of a wait status the way a shell (and Docker) reports it.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

/// A signal set holding `signals`.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// The signals init waits for synchronously: SIGCHLD and the forwarded ones.
pub fn waited_signals() -> libc::sigset_t {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    sigset(&all)
}

/// Blocks the waited signals so they queue for [`wait_signal`]; threads inherit the mask.
pub fn block_signals() {
    let set = waited_signals();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for one signal of `set` (which must be blocked) and returns its number.
pub fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if sig > 0 {
            return sig;
        }
    }
}

/// Puts the terminal `tty` in raw mode: bytes pass unchanged in both directions.
pub fn make_raw(tty: &impl AsRawFd) -> io::Result<()> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the borrow's life and `t` is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `t` is initialised by tcgetattr.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as for tcgetattr; `t` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until everything written to the terminal `tty` has been sent.
pub fn drain(tty: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: `fd` is open for the borrow's life.
    if unsafe { libc::tcdrain(tty.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Powers the VM off; never returns, because PID 1 exiting panics the kernel.
pub fn power_off() -> ! {
    sync();
    // The kernel's "reboot: Power down" line is printed at emergency level, past any
    // loglevel; the console is the container's output, so stop kernel messages reaching it.
    // (klogctl's console-off keeps level 1, which still lets emergency lines through.)
    let _ = std::fs::write("/proc/sys/kernel/printk", "0");
    // SAFETY: reboot with a valid command; on success it does not return.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        // SAFETY: pause has no preconditions; all that is left is waiting.
        unsafe { libc::pause() };
    }
}

/// Brings the loopback interface up; Linux then gives it 127.0.0.1 by itself.
pub fn loopback_up() -> io::Result<()> {
    link_up("lo")
}

/// Sets IFF_UP on the interface `name`.
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name);
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
}

/// An AF_INET datagram socket, what the interface ioctls are issued on.
pub fn inet_socket() -> io::Result<std::os::fd::OwnedFd> {
    socket_of(libc::AF_INET)
}

/// A datagram socket of address family `family`, for interface ioctls of that family.
pub fn socket_of(family: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket has no memory-safety preconditions.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` is a socket just opened and owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// A zeroed ifreq naming the interface `name` (cut to IFNAMSIZ - 1 bytes).
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .take(libc::IFNAMSIZ - 1)
        .zip(name.bytes())
    {
        *dst = src as libc::c_char;
    }
    req
}

/// An interface ioctl `op` on the socket `fd` with `req`.
pub fn ifreq_ioctl(fd: libc::c_int, op: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: `req` is a valid ifreq naming an interface; the ioctl reads and writes it.
    check(unsafe { libc::ioctl(fd, op, req as *mut libc::ifreq) })
}
