//! The screen of `weir top`: the component table, its sort order and filter, the header.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};

use super::stats::Row;

/// The table's columns, in order; the digit keys `1`..`9` sort by them.
pub const COLUMNS: [&str; 9] = [
    "ID",
    "KIND",
    "TYPE",
    "IN/S",
    "OUT/S",
    "ERRORS",
    "DISCARDED",
    "BUFFER",
    "LATENCY",
];

/// What the operator chose: the sort column and direction, the filter.
#[derive(Debug, Default)]
pub struct View {
    pub sort: usize,
    pub descending: bool,
    pub filter: String,
    /// Typing into the filter (after `/`, until Enter or Esc).
    pub editing: bool,
}

impl View {
    /// Sorts by `column`: a new column sorts numbers largest first and names from A;
    /// the same column again reverses.
    pub fn sort_by(&mut self, column: usize) {
        if column >= COLUMNS.len() {
            return;
        }
        match self.sort == column {
            true => self.descending = !self.descending,
            false => {
                self.sort = column;
                self.descending = column >= 3;
            }
        }
    }

    /// The rows to show: filtered (the filter is a substring of the id, kind or type),
    /// then sorted.
    pub fn arrange(&self, rows: &[Row]) -> Vec<Row> {
        let needle = self.filter.to_lowercase();
        let mut shown: Vec<Row> = rows
            .iter()
            .filter(|r| {
                needle.is_empty()
                    || [&r.id, &r.kind, &r.type_name]
                        .iter()
                        .any(|s| s.to_lowercase().contains(&needle))
            })
            .cloned()
            .collect();
        let key = |r: &Row| -> f64 {
            match self.sort {
                3 => r.in_per_sec,
                4 => r.out_per_sec,
                5 => r.errors,
                6 => r.discarded,
                7 => r.buffer.unwrap_or(-1.0),
                _ => r.latency_ms.unwrap_or(-1.0),
            }
        };
        shown.sort_by(|a, b| {
            let order = match self.sort {
                0 => a.id.cmp(&b.id),
                1 => (&a.kind, &a.id).cmp(&(&b.kind, &b.id)),
                2 => (&a.type_name, &a.id).cmp(&(&b.type_name, &b.id)),
                _ => key(a).total_cmp(&key(b)).then_with(|| b.id.cmp(&a.id)),
            };
            match self.descending {
                true => order.reverse(),
                false => order,
            }
        });
        shown
    }
}

/// What the header says besides the table.
pub struct Status<'a> {
    pub api: &'a str,
    pub devices: f64,
    pub alarms: f64,
    /// Why the last reading of `/metrics` failed, if it did.
    pub error: Option<&'a str>,
    /// Whether a reading has been taken at all.
    pub loaded: bool,
}

pub fn draw(frame: &mut Frame, view: &View, rows: &[Row], status: &Status<'_>) {
    let [header, table, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let title = Line::from(format!(
        "weir top — {} — connected devices: {} — active alarms: {}",
        status.api, status.devices, status.alarms
    ))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let state = match (status.error, status.loaded) {
        (Some(error), _) => Line::from(format!("cannot reach the weir API: {error} (retrying)"))
            .style(Style::new().fg(Color::Red)),
        (None, false) => Line::from("reading /metrics ..."),
        (None, true) => Line::from(""),
    };
    frame.render_widget(Paragraph::new(vec![title, state]), header);

    let names: Vec<Cell> = COLUMNS
        .iter()
        .enumerate()
        .map(|(n, name)| {
            let mark = match (n == view.sort, view.descending) {
                (true, true) => "▼",
                (true, false) => "▲",
                (false, _) => "",
            };
            Cell::from(format!("{}{name}{mark}", n + 1))
        })
        .collect();
    let lines = view.arrange(rows).into_iter().map(|r| {
        TableRow::new(vec![
            Cell::from(r.id),
            Cell::from(r.kind),
            Cell::from(r.type_name),
            Cell::from(format!("{:.1}", r.in_per_sec)),
            Cell::from(format!("{:.1}", r.out_per_sec)),
            Cell::from(format!("{}", r.errors)),
            Cell::from(format!("{}", r.discarded)),
            Cell::from(
                r.buffer
                    .map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
            ),
            Cell::from(r.latency_ms.map_or("-".into(), |l| format!("{l:.1}ms"))),
        ])
    });
    let widths = [
        Constraint::Fill(3),
        Constraint::Length(11),
        Constraint::Fill(2),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(11),
    ];
    let table_widget = Table::new(lines, widths)
        .header(TableRow::new(names).style(Style::new().add_modifier(Modifier::REVERSED)));
    frame.render_widget(table_widget, table);

    let help = match view.editing {
        true => format!("filter: {}_   (Enter: keep, Esc: clear)", view.filter),
        false => format!(
            "1-9: sort by column (again: reverse)   /: filter{}   q: quit",
            match view.filter.is_empty() {
                true => String::new(),
                false => format!(" [{}]", view.filter),
            }
        ),
    };
    frame.render_widget(Paragraph::new(help), footer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, rate: f64) -> Row {
        Row {
            id: id.into(),
            kind: "source".into(),
            type_name: "http".into(),
            in_per_sec: rate,
            out_per_sec: 0.0,
            errors: 0.0,
            discarded: 0.0,
            buffer: None,
            latency_ms: None,
        }
    }

    #[test]
    fn sorting_and_filtering() {
        let rows = [row("a", 1.0), row("b", 5.0), row("c", 3.0)];
        let mut view = View::default();
        let ids = |v: &View| {
            v.arrange(&rows)
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&view), ["a", "b", "c"]);
        view.sort_by(3);
        assert_eq!(ids(&view), ["b", "c", "a"]);
        view.sort_by(3);
        assert_eq!(ids(&view), ["a", "c", "b"]);
        view.filter = "B".into();
        assert_eq!(ids(&view), ["b"]);
    }
}
