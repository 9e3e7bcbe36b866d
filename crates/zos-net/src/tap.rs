//! Tap devices, made by the (root) manager and handed to QEMU as an open descriptor: the
//! jailed QEMU has no capabilities and no /dev/net/tun.
//!
//! The tap is not persistent: it exists while a descriptor to it is open, so it goes away
//! by itself when QEMU ends, however QEMU ends.

use crate::{Error, Result};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

/// Linux's TUNSETIFF ioctl: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens a new tap named `name` (with virtio-net headers, so QEMU can pass offloads through)
/// and returns its descriptor, close-on-exec: the caller clears that for the one child it
/// hands it to.
pub fn create(name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(Error::Invalid(format!(
            "tap name {name:?} must be 1-15 bytes"
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| {
            Error::io(
                "opening /dev/net/tun (taps need root and the tun module)",
                e,
            )
        })?;
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `req` is a valid ifreq naming the device; TUNSETIFF reads it and writes the
    // final name back into it.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if ret < 0 {
        return Err(Error::io(
            format!("creating tap {name}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(file.into())
}
