//! Host-wide locks in the network state dir ([`crate::lease::state_dir`]): whatever two
//! managers could do at once to the host's one network state goes under one.

use crate::{lease, Error, Result};
use std::fs::{self, File};
use std::os::fd::AsRawFd;

/// Takes the exclusive lock `name` in the state dir (made if missing), blocking until it is
/// free; it is held until the returned file is closed.
pub(crate) fn exclusive(name: &str) -> Result<File> {
    let dir = lease::state_dir();
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(name);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io(
            format!("locking {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file)
}
