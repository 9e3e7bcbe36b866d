//! Bounded VM logs: the serial console, and the flist mount's, virtiofsd's and QEMU's stderr.
//! Their writers all append (`O_APPEND`, see [`open_for_writer`]), so a log is rotated by
//! copy-and-truncate under them: the next write lands at the new end, with no hole before it
//! and no reopen needed.

use std::fs;
use std::path::{Path, PathBuf};

/// How many rotated generations are kept beside the live log (`NAME.1` …).
pub const KEEP: usize = 2;

/// Opens `log` for a helper process to write its output to: created if missing, appending,
/// as rotation needs.
pub fn open_for_writer(log: &Path) -> crate::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| crate::Error::io(format!("opening {}", log.display()), e))
}

/// Rotates `log` if it is larger than `max_bytes`: `.1` → `.2`, live → `.1`, live truncated.
/// A missing log is not an error (the helper writing it has not started yet).
pub fn rotate_if_large(log: &Path, max_bytes: u64) -> std::io::Result<bool> {
    let len = match fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    for i in (1..KEEP).rev() {
        let from = rotated(log, i);
        if from.exists() {
            fs::rename(&from, rotated(log, i + 1))?;
        }
    }
    fs::copy(log, rotated(log, 1))?;
    fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

/// The `i`-th rotated generation of `log` (`console.log.1` for 1).
pub fn rotated(log: &Path, i: usize) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_past_the_bound_is_rotated_and_its_appending_writer_goes_on_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("mount.log");
        assert!(!rotate_if_large(&log, 10).unwrap(), "a missing log is fine");
        // As the helpers hold their stderr: opened once, appending.
        let mut writer = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        for generation in 0..5 {
            writer
                .write_all(format!("gen {generation}\n").repeat(20).as_bytes())
                .unwrap();
            assert!(!rotate_if_large(&log, 1000).unwrap(), "under the bound");
            assert!(rotate_if_large(&log, 100).unwrap());
            assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        }
        writer.write_all(b"after\n").unwrap();
        // No hole of zeros where the old end was: the append lands at offset 0.
        assert_eq!(fs::read_to_string(&log).unwrap(), "after\n");
        assert!(fs::read_to_string(rotated(&log, 1))
            .unwrap()
            .starts_with("gen 4\n"));
        assert!(fs::read_to_string(rotated(&log, 2))
            .unwrap()
            .starts_with("gen 3\n"));
        assert!(!rotated(&log, KEEP + 1).exists(), "older generations go");
        let total: u64 = (1..=KEEP)
            .map(|i| fs::metadata(rotated(&log, i)).unwrap().len())
            .sum();
        assert!(total <= 2 * 120, "bounded: {total} bytes kept");
    }
}
