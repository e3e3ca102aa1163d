//! Standard output for commands whose output is piped (`leap-edge events --json | head`):
//! a reader that stops early must end the command quietly, not with a panic.

use std::io::Write;

pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("leap-edge: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::output::line(format_args!($($arg)*)) };
}

/// Red for problems a technician must act on — only on a terminal, and never when
/// `NO_COLOR` is set, so scripts and logs get plain text. JSON output never calls it.
pub(crate) fn alarm(text: &str) -> String {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    if colour(
        Format::Text,
        terminal,
        std::env::var_os("NO_COLOR").is_some(),
    ) {
        format!("\x1b[1;31m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// What a command prints: text for a person, or JSON for a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

/// Colour is for a person at a terminal: never in JSON (a program parses it, issue 16),
/// never into a pipe or file, never with `NO_COLOR` (no-color.org).
pub(crate) fn colour(format: Format, terminal: bool, no_color: bool) -> bool {
    format == Format::Text && terminal && !no_color
}

/// Whether output in `format` on this process's standard output may be coloured.
pub(crate) fn stdout_colour(format: Format) -> bool {
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    colour(format, terminal, std::env::var_os("NO_COLOR").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_on_a_terminal_without_no_color_is_coloured() {
        assert!(colour(Format::Text, true, false));
        assert!(!colour(Format::Json, true, false), "JSON on a terminal");
        assert!(!colour(Format::Text, false, false), "a pipe");
        assert!(!colour(Format::Text, true, true), "NO_COLOR");
    }
}
