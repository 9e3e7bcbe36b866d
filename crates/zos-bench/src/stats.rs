//! The one median and the per-step timing summary every table uses.

use crate::measure::Measured;

/// The median of `values`: the middle one of an odd count, the mean of the middle pair of an
/// even count; NaN for no values (a table then shows "NaN" rather than a made-up number).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// One step's measurements over all runs.
pub struct Timing {
    /// Wall seconds of each run, in run order.
    pub seconds: Vec<f64>,
    /// [`median`] of `seconds`.
    pub median: f64,
    /// Peak RSS of the measured child, max over the runs (0 when not measured).
    pub peak_rss_mib: f64,
}

impl Timing {
    /// From child processes measured by [`crate::measure::measure`].
    pub fn of(runs: &[Measured]) -> Timing {
        Timing::of_seconds(
            runs.iter().map(|m| m.seconds).collect(),
            runs.iter().map(Measured::peak_rss_mib).fold(0.0, f64::max),
        )
    }

    /// From wall seconds timed some other way (in-process reads, a mount plus a read, a boot).
    pub fn of_seconds(seconds: Vec<f64>, peak_rss_mib: f64) -> Timing {
        let median = median(&seconds);
        Timing {
            seconds,
            median,
            peak_rss_mib,
        }
    }

    /// "median of 3, range 2.10–4.05 s", or "1 run".
    pub fn spread(&self) -> String {
        self.spread_prec(2)
    }

    /// "2.10–4.05 s" with `prec` decimals; None for a single run, which has no range.
    pub fn range(&self, prec: usize) -> Option<String> {
        if self.seconds.len() < 2 {
            return None;
        }
        let min = self.seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .seconds
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        Some(format!("{min:.prec$}–{max:.prec$} s"))
    }

    /// `spread` with `prec` decimals: the mount table's steps can take milliseconds.
    pub fn spread_prec(&self, prec: usize) -> String {
        match self.range(prec) {
            None => "1 run".to_owned(),
            Some(range) => format!("median of {}, range {range}", self.seconds.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[5.0, 1.0, 4.0, 2.0, 3.0]), 3.0);
    }

    #[test]
    fn median_of_an_even_count_averages_the_middle_pair() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[10.0, 1.0]), 5.5);
    }

    #[test]
    fn median_of_one_value_is_that_value() {
        assert_eq!(median(&[7.25]), 7.25);
    }

    #[test]
    fn median_of_nothing_is_nan() {
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn timing_uses_the_same_median() {
        let t = Timing::of_seconds(vec![1.0, 4.0, 2.0, 3.0], 0.0);
        assert_eq!(t.median, 2.5);
        assert_eq!(t.spread(), "median of 4, range 1.00–4.00 s");
        assert_eq!(Timing::of_seconds(vec![1.0], 0.0).spread(), "1 run");
    }
}
