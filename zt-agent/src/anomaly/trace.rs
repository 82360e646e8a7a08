//! Syscall traces on disk: one trace (one process) per file, its calls as
//! whitespace-separated integer tokens, the format public host-intrusion
//! datasets (ADFA-LD and the like) use. The numbering is the reader's
//! business: a token is just an integer.
//!
//! - [`Trace`]: a file's tokens and where it came from.
//! - [`read_dir`]: every `*.txt` under a directory, recursively, in path
//!   order; a bad token is an error at `file:line:column`.
//! - [`write`]: one trace, written atomically.
use std::path::{Path, PathBuf};

use crate::fsutil::{self, FsError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub path: PathBuf,
    pub calls: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}:{line}:{column}: {token:?} is not a syscall number (an integer from 0 to 4294967295)", path.display())]
    Token { path: PathBuf, line: usize, column: usize, token: String },
    #[error("{}: no trace (*.txt) under it", .0.display())]
    Empty(PathBuf),
}

/// The tokens of one trace file's text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<u32>, TraceError> {
    let mut calls = Vec::new();
    for (l, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
            let token_len = rest[start..].find(char::is_whitespace).unwrap_or(rest.len() - start);
            let token = &rest[start..start + token_len];
            let column = line.len() - rest.len() + start + 1;
            let call = token.parse().map_err(|_| TraceError::Token { path: path.into(), line: l + 1, column, token: token.into() })?;
            calls.push(call);
            rest = &rest[start + token_len..];
        }
    }
    Ok(calls)
}

/// Every `*.txt` under `dir` (recursively; sorted by path, so a seeded
/// split is the same on every machine). Empty files are traces of no call
/// and are kept; no trace at all is an error.
pub fn read_dir(dir: &Path) -> Result<Vec<Trace>, TraceError> {
    let mut paths = Vec::new();
    collect(dir, &mut paths)?;
    paths.sort();
    if paths.is_empty() {
        return Err(TraceError::Empty(dir.into()));
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(fsutil::at("reading", &path))?;
            Ok(Trace { calls: parse(&path, &text)?, path })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FsError> {
    for entry in std::fs::read_dir(dir).map_err(fsutil::at("listing", dir))? {
        let path = entry.map_err(fsutil::at("listing", dir))?.path();
        let kind = std::fs::metadata(&path).map_err(fsutil::at("reading", &path))?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

/// Writes `calls` as one trace file (space-separated, a newline at the end).
pub fn write(path: &Path, calls: &[u32]) -> Result<(), FsError> {
    let mut text = calls.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    text.push('\n');
    fsutil::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_on_any_whitespace_and_errors_at_line_and_column() {
        let p = Path::new("t.txt");
        assert_eq!(parse(p, "6 6 63 6\n42\t120  \n\n").unwrap(), [6, 6, 63, 6, 42, 120]);
        let e = parse(p, "1 2\n3  x4 5\n").unwrap_err().to_string();
        assert_eq!(e, "t.txt:2:4: \"x4\" is not a syscall number (an integer from 0 to 4294967295)");
        assert!(parse(p, "-1").is_err());
    }

    #[test]
    fn reads_txt_files_recursively_in_path_order_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        write(&d.path().join("b/c/2.txt"), &[3, 4]).unwrap();
        write(&d.path().join("a.txt"), &[1, 2]).unwrap();
        std::fs::write(d.path().join("notes.md"), "not a trace").unwrap();
        let traces = read_dir(d.path()).unwrap();
        assert_eq!(traces.iter().map(|t| t.calls.clone()).collect::<Vec<_>>(), [vec![1, 2], vec![3, 4]]);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(read_dir(empty.path()), Err(TraceError::Empty(_))));
    }
}
