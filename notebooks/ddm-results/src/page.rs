//! Several tables and figures as one cell output.
//!
//! evcxr keeps one value per MIME type and cell (a second `text/html` replaces the first), so a
//! cell that shows a table and a figure shows one [`Page`] holding both.

use crate::{Figure, Table};

/// A table or a figure.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// A table.
    Table(Table),
    /// A figure.
    Figure(Figure),
}

impl From<Table> for Part {
    fn from(t: Table) -> Self {
        Part::Table(t)
    }
}

impl From<Figure> for Part {
    fn from(f: Figure) -> Self {
        Part::Figure(f)
    }
}

/// Parts shown top to bottom.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page(pub Vec<Part>);

/// A page of `parts`: `page([table.into(), figure.into()])`.
pub fn page(parts: impl IntoIterator<Item = Part>) -> Page {
    Page(parts.into_iter().collect())
}

impl Page {
    /// The parts as HTML.
    pub fn html(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Table(t) => t.html(),
                Part::Figure(f) => f.html(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tables as text (figures as a placeholder line).
    pub fn text(&self) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Table(t) => t.to_string(),
                Part::Figure(f) => format!("[{} SVG figure(s)]", f.svgs.len()),
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// evcxr's display hook: one HTML value and one plain-text value for the cell.
    pub fn evcxr_display(&self) {
        println!("EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT", self.html());
        println!("EVCXR_BEGIN_CONTENT text/plain\n{}\nEVCXR_END_CONTENT", self.text());
    }
}
