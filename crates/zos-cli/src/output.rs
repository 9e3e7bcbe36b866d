//! Text output shared by the commands that talk to a node.

use zos_client::status::state_label;
use zos_types::Deployment;

/// Left-aligned columns two spaces apart, headers first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line += &format!("{cell:<width$}  ");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// A byte count for people (zos_types::ByteSize's one format).
pub fn human_size(bytes: u64) -> String {
    zos_types::ByteSize(bytes).to_string()
}

/// Each workload's type, state and the first line of its message.
pub fn results_table(d: &Deployment) -> String {
    let rows: Vec<Vec<String>> = d
        .workloads
        .iter()
        .map(|w| {
            vec![
                w.name.to_string(),
                w.spec.type_name().to_string(),
                state_label(w).to_string(),
                first_line(w.result.as_ref().map_or("", |r| &r.message)).to_string(),
            ]
        })
        .collect();
    table(&["WORKLOAD", "TYPE", "STATE", "MESSAGE"], &rows)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_helpers() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(
            table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]),
            "A    LONGER\nxyz  1\n"
        );
    }
}
