//! The serial console log of a VM: QEMU appends to it (`append=on`, so truncating it under
//! QEMU is safe), and it is rotated by copy-and-truncate once it grows past a limit
//! ([`crate::logs`]).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The rotation of the console log is that of every VM log (see [`crate::logs`]).
pub use crate::logs::{rotate_if_large, KEEP};

/// The last `lines` lines of the log (reading at most the last 64 KiB), lossily decoded.
pub fn tail(log: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(log) else {
        return String::from("(no console output)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return String::from("(console log unreadable)");
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let out = all[from..].join("\n");
    if out.trim().is_empty() {
        String::from("(no console output)")
    } else {
        out
    }
}

/// The log from byte `offset` on (from the start if it was rotated since), at most 1 MiB,
/// lossily decoded.
pub fn since(log: &Path, offset: u64) -> String {
    let Ok(mut file) = fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if offset > len { 0 } else { offset };
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err()
        || file.take(1 << 20).read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The marker the Linux kernel prints when it panics.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// The lines around the last kernel panic in `text`: a few lines before the panic line (what
/// triggered it) and up to `lines` in all, or `None` if the kernel did not panic. The call
/// trace after a panic can be long, so a plain tail may miss the line that says why.
pub fn panic_excerpt(text: &str, lines: usize) -> Option<String> {
    const BEFORE: usize = 4;
    let all: Vec<&str> = text.lines().collect();
    let at = all.iter().rposition(|l| l.contains(PANIC_MARKER))?;
    let from = at.saturating_sub(BEFORE);
    let to = (from + lines.max(BEFORE + 1)).min(all.len());
    let mut out = all[from..to].join("\n");
    if to < all.len() {
        out.push_str(&format!(
            "\n[… {} more lines in the console log]",
            all.len() - to
        ));
    }
    Some(out)
}

/// Follows a log like `tail -f` that survives rotation: when the file shrinks below our
/// offset it was truncated, and reading restarts at its beginning. (Output that regrows the
/// file past the old offset between two reads is not noticed; rotation happens at 1 MiB.)
pub struct Follower {
    path: PathBuf,
    offset: u64,
}

impl Follower {
    /// Starts at the beginning of the log.
    pub fn new(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            offset: 0,
        }
    }

    /// Whatever was appended since the last call.
    pub fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        let mut file = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::rotated as numbered;

    #[test]
    fn the_panic_excerpt_starts_before_the_panic_line_however_long_the_trace() {
        let mut log = String::from("boot\nsysrq: Trigger a crash\n");
        log.push_str("Kernel panic - not syncing: sysrq triggered crash\n");
        for i in 0..100 {
            log.push_str(&format!("trace {i}\n"));
        }
        let excerpt = panic_excerpt(&log, 10).unwrap();
        let lines: Vec<&str> = excerpt.lines().collect();
        assert_eq!(lines[0], "boot");
        assert_eq!(lines[1], "sysrq: Trigger a crash");
        assert!(lines[2].starts_with(PANIC_MARKER));
        assert_eq!(lines.len(), 11, "{excerpt}");
        assert_eq!(lines[10], "[… 93 more lines in the console log]");
        assert_eq!(panic_excerpt("all fine\n", 10), None);
        assert_eq!(
            panic_excerpt("Kernel panic - not syncing: x\n", 10).as_deref(),
            Some("Kernel panic - not syncing: x")
        );
    }

    #[test]
    fn rotation_keeps_the_newest_logs_and_the_follower_survives_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut f = Follower::new(&log);
        assert!(f.read_new().unwrap().is_empty());
        for round in 0..4 {
            // Each round's log is shorter than the last: a truncation the follower can see.
            fs::write(&log, format!("round {round}\n").repeat(100 - round * 10)).unwrap();
            assert!(f.read_new().unwrap().starts_with(b"round"));
            assert!(rotate_if_large(&log, 10).unwrap());
        }
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert!(fs::read_to_string(numbered(&log, 1))
            .unwrap()
            .starts_with("round 3"));
        assert!(fs::read_to_string(numbered(&log, 2))
            .unwrap()
            .starts_with("round 2"));
        assert!(!numbered(&log, 3).exists());
        fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(f.read_new().unwrap(), b"a\nb\nc\n");
        assert_eq!(tail(&log, 2), "b\nc");
        assert!(!rotate_if_large(&log, 1000).unwrap());
    }
}
