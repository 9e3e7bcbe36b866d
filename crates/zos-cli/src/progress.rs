//! Progress bars on stderr for long flist operations; silent when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes and entries, shown as one bar over bytes with an entry counter.
pub struct Bar {
    bar: ProgressBar,
    entries: AtomicU64,
}

impl Bar {
    /// Whether a bar would be seen at all (so callers can skip work needed only for it).
    pub fn visible(quiet: bool) -> bool {
        !quiet && std::io::stderr().is_terminal()
    }

    /// A bar over `total_bytes`, hidden when `quiet` or when stderr is not a terminal.
    pub fn new(verb: &str, total_bytes: u64, quiet: bool) -> Bar {
        let bar = ProgressBar::with_draw_target(
            Some(total_bytes),
            if Self::visible(quiet) {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar {
            bar,
            entries: AtomicU64::new(0),
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl zos_flist::Progress for Bar {
    fn entry(&self) {
        let n = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(256) {
            self.bar.set_message(format!("{n} files"));
        }
    }

    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }
}

/// Formats a byte count for people (zos_types::ByteSize's one format).
pub fn human(bytes: u64) -> String {
    zos_types::ByteSize(bytes).to_string()
}
