//! Output: stdout is written with `write_all` (here, or by `get` streaming a value), never
//! `println!`, so a closed pipe (`weft list | head`) is an `io::Error` that `main` turns
//! into a normal exit, never a panic.

//!
//! A command that `weft watch` runs for another `weft` process (through its control
//! socket, see `control.rs`) writes through the same functions: on that thread they send
//! the bytes to the other process instead ([`capturing`]).

use std::cell::RefCell;
use std::io::{self, Write};

/// Writes `text` and a newline to stdout.
pub(crate) fn line(text: impl AsRef<str>) -> io::Result<()> {
    let mut out = stdout();
    out.write_all(text.as_ref().as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes `text` and a newline to stderr (a note beside the output, not an error).
pub(crate) fn note(text: impl AsRef<str>) {
    let text = format!("{}\n", text.as_ref());
    match captured() {
        Some(c) => {
            let _ = c.send(Stream::Stderr, text.as_bytes());
        }
        None => {
            let _ = io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// Which of a process's outputs bytes go to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Largest piece of output sent at once to a process a command runs for.
pub(crate) const CAPTURE_CHUNK_BYTES: usize = 64 * 1024;

/// The outputs of a command run for another process: what it writes goes to `tx`.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    /// Where the output goes, in order.
    pub(crate) tx: tokio::sync::mpsc::Sender<(Stream, Vec<u8>)>,
    /// Whether that process's stdout is a terminal.
    pub(crate) stdout_terminal: bool,
    /// That process's `WEFT_TOKEN`, which the command reads instead of this one's.
    pub(crate) weft_token: Option<String>,
}

impl Capture {
    fn send(&self, stream: Stream, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CAPTURE_CHUNK_BYTES);
        self.tx
            .blocking_send((stream, bytes[..n].to_vec()))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(n)
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's output going to `capture` (on a thread of its own: the
/// sends block).
pub(crate) fn capturing<T>(capture: Capture, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CAPTURE.with(|c| *c.borrow_mut() = None);
        }
    }
    CAPTURE.with(|c| *c.borrow_mut() = Some(capture));
    let _reset = Reset;
    f()
}

/// The capture this thread writes to, if any.
pub(crate) fn captured() -> Option<Capture> {
    CAPTURE.with(|c| c.borrow().clone())
}

/// Standard output: this process's, or that of the process a command runs for.
pub(crate) enum Stdout {
    /// This process's.
    Process(io::StdoutLock<'static>),
    /// Another process's.
    Captured(Capture),
}

/// Standard output (see [`Stdout`]).
pub(crate) fn stdout() -> Stdout {
    match captured() {
        Some(c) => Stdout::Captured(c),
        None => Stdout::Process(io::stdout().lock()),
    }
}

impl Stdout {
    /// Whether the output ends on a terminal.
    pub(crate) fn is_terminal(&self) -> bool {
        use std::io::IsTerminal as _;
        match self {
            Stdout::Process(out) => out.is_terminal(),
            Stdout::Captured(c) => c.stdout_terminal,
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stdout::Process(out) => out.write(buf),
            Stdout::Captured(c) => c.send(Stream::Stdout, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stdout::Process(out) => out.flush(),
            Stdout::Captured(_) => Ok(()),
        }
    }
}

/// Writes a JSON value on one line.
pub(crate) fn json(value: &serde_json::Value) -> io::Result<()> {
    line(value.to_string())
}

/// Writes a JSON value, pretty-printed.
pub(crate) fn json_pretty(value: &serde_json::Value) -> io::Result<()> {
    line(serde_json::to_string_pretty(value).map_err(io::Error::other)?)
}

/// A table with a header row, columns aligned by padding (the last column is not
/// padded, so long values do not leave trailing spaces).
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines.
    pub(crate) fn render(&self) -> Vec<String> {
        let columns = self.header.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|row| {
                let mut s = String::new();
                for (i, cell) in row.iter().enumerate() {
                    if i + 1 == columns {
                        s.push_str(cell);
                    } else {
                        s.push_str(cell);
                        s.extend(std::iter::repeat_n(
                            ' ',
                            widths[i] - cell.chars().count() + 2,
                        ));
                    }
                }
                s
            })
            .collect()
    }

    /// Prints the table.
    pub(crate) fn print(&self) -> io::Result<()> {
        for l in self.render() {
            line(l)?;
        }
        Ok(())
    }
}

/// A duration since the Unix epoch as `2025-01-31 12:00:00 UTC`, or `-`.
pub(crate) fn time(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".to_owned();
    };
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02} UTC")
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A byte count for humans.
pub(crate) fn bytes_human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_times_format() {
        let mut t = Table::new(&["KEY", "VALUE"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "2".into()]);
        assert_eq!(t.render(), ["KEY     VALUE", "a       1", "longer  2"]);
        assert_eq!(time(Some(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(Some(1_700_000_000_000)), "2023-11-14 22:13:20 UTC");
        assert_eq!(time(None), "-");
        assert_eq!(bytes_human(10), "10 B");
        assert_eq!(bytes_human(1536), "1.5 KiB");
    }
}
