//! The one table printer: every benchmark prints its rows through [`print_grid`], then its
//! targets through [`print_targets`].

use serde::Serialize;

/// One target from the issue and whether this run met it.
#[derive(Serialize)]
pub struct Target {
    /// What is compared, e.g. "pack / cp -a throughput".
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The bound, e.g. ">= 0.5x".
    pub target: String,
    /// Whether `value` is within `target`.
    pub met: bool,
}

/// Prints `rows` as pretty JSON (`--json`) or through `print` (the table).
pub fn emit<T: Serialize>(rows: &T, json: bool, print: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else {
        print(rows);
    }
    Ok(())
}

/// A number with `prec` decimals, or "-" for a cell with no value.
pub fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.prec$}"))
}

/// Prints one line per target: its value and whether it was met.
pub fn print_targets(targets: &[Target]) {
    for t in targets {
        println!(
            "{}: {:.2} (target {}: {})",
            t.name,
            t.value,
            t.target,
            if t.met { "target met" } else { "NOT met" }
        );
    }
}

/// One row of a step / value / unit / floor / notes table (the node and net benchmarks').
pub struct ValueRow<'a> {
    /// What was measured.
    pub step: &'a str,
    /// Its value.
    pub value: f64,
    /// The value's unit.
    pub unit: &'a str,
    /// The floor measured in the same run, if any.
    pub floor: Option<f64>,
    /// How, and against what.
    pub notes: &'a str,
}

/// Prints `rows` as a step / value / unit / floor / notes table (values with 2 decimals).
pub fn print_value_rows<'a>(rows: impl IntoIterator<Item = ValueRow<'a>>) {
    let cells: Vec<[String; 5]> = rows
        .into_iter()
        .map(|r| {
            [
                r.step.to_owned(),
                format!("{:.2}", r.value),
                r.unit.to_owned(),
                fmt(r.floor, 2),
                r.notes.to_owned(),
            ]
        })
        .collect();
    print_grid(["step", "value", "unit", "floor", "notes"], &cells);
}

/// Prints a table: the first and last columns (text) left-aligned, the others (numbers)
/// right-aligned so digits line up.
pub fn print_grid<const N: usize>(header: [&str; N], cells: &[[String; N]]) {
    print!("{}", grid(header, cells));
}

/// The text [`print_grid`] prints.
fn grid<const N: usize>(header: [&str; N], cells: &[[String; N]]) -> String {
    let mut width = header.map(|h| h.chars().count());
    for c in cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let line = |c: [&str; N]| {
        let mut out = String::new();
        for (i, (v, w)) in c.iter().zip(width).enumerate() {
            if i == N - 1 {
                // No padding after the last column: it would only add trailing spaces.
                out.push_str(v);
            } else if i == 0 {
                out.push_str(&format!("{v:<w$} | "));
            } else {
                out.push_str(&format!("{v:>w$} | "));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&rule.join("-+-"));
    out.push('\n');
    for c in cells {
        out.push_str(&line(c.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_left_numbers_right_no_trailing_spaces() {
        let cells = [
            [
                "cp -a".to_owned(),
                "1.50".to_owned(),
                "the floor".to_owned(),
            ],
            [
                "pack (1% changed)".to_owned(),
                "12.00".to_owned(),
                String::new(),
            ],
        ];
        assert_eq!(
            grid(["step", "seconds", "notes"], &cells),
            "step              | seconds | notes\n\
             ------------------+---------+----------\n\
             cp -a             |    1.50 | the floor\n\
             pack (1% changed) |   12.00 | \n"
        );
    }
}

/// One owned line of a step/value/unit/floor/notes table (what `--json` prints).
#[derive(serde::Serialize)]
pub struct Row {
    /// What was measured.
    pub step: String,
    /// Its value (a median).
    pub value: f64,
    /// The value's unit.
    pub unit: &'static str,
    /// The floor measured in the same run, if any.
    pub floor: Option<f64>,
    /// How, against what, and whether its target was met.
    pub notes: String,
}

/// A table of [`Row`]s and the targets judged on them.
#[derive(serde::Serialize)]
pub struct Report {
    /// The lines.
    pub rows: Vec<Row>,
    /// The targets.
    pub targets: Vec<Target>,
}

impl Report {
    /// Prints the table, then the targets.
    pub fn print(&self) {
        print_value_rows(self.rows.iter().map(|r| ValueRow {
            step: &r.step,
            value: r.value,
            unit: r.unit,
            floor: r.floor,
            notes: &r.notes,
        }));
        print_targets(&self.targets);
    }
}
