//! `sim/regressions.txt`: seeds that once failed. Every sweep replays them first.
//!
//! One seed per line, optionally followed by `--plant <name>`; `#` starts a comment:
//!
//! ```text
//! 1234                      # leader acknowledged a write lost on restart (fixed in wal)
//! 99 --plant forget-vote    # the planted bug must stay caught
//! ```
//! A seed with a plant is expected to FAIL (the planted bug must stay caught); a seed without
//! one is expected to pass.

use std::path::{Path, PathBuf};

use crate::scenario::Plant;

/// One pinned seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regression {
    /// The seed.
    pub seed: u64,
    /// The planted bug it runs with.
    pub plant: Plant,
    /// The comment after `#`.
    pub note: String,
}

impl Regression {
    /// Whether the seed must fail (planted bug) rather than pass.
    pub fn expects_failure(&self) -> bool {
        self.plant != Plant::None
    }
}

/// The regression file of this workspace.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions.txt")
}

/// Parses the file's text; an error names the line.
pub fn parse(text: &str) -> Result<Vec<Regression>, String> {
    let mut regressions = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let (body, note) = match line.split_once('#') {
            Some((body, note)) => (body, note.trim().to_string()),
            None => (line, String::new()),
        };
        let words: Vec<&str> = body.split_whitespace().collect();
        let bad = |why: &str| format!("regressions line {}: {why}: {line:?}", number + 1);
        let regression = match words.as_slice() {
            [] => continue,
            [seed] => Regression {
                seed: seed.parse().map_err(|_| bad("not a seed"))?,
                plant: Plant::None,
                note,
            },
            [seed, "--plant", plant] => Regression {
                seed: seed.parse().map_err(|_| bad("not a seed"))?,
                plant: plant.parse().map_err(|e: String| bad(&e))?,
                note,
            },
            _ => return Err(bad("expected `<seed> [--plant <name>] [# note]`")),
        };
        regressions.push(regression);
    }
    Ok(regressions)
}

/// Reads and parses `path` (a missing file is an empty list).
#[allow(clippy::disallowed_methods)] // the harness reads the real disk, outside any simulation
pub fn load(path: &Path) -> Result<Vec<Regression>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_plants_and_notes_and_blank_lines_are_skipped() {
        let parsed =
            parse("# header\n\n12  # lost write\n99 --plant forget-vote # keep caught\n").unwrap();
        assert_eq!(
            parsed,
            vec![
                Regression {
                    seed: 12,
                    plant: Plant::None,
                    note: "lost write".into()
                },
                Regression {
                    seed: 99,
                    plant: Plant::ForgetVote,
                    note: "keep caught".into()
                },
            ]
        );
        assert!(parsed[1].expects_failure() && !parsed[0].expects_failure());
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let error = parse("1\nabc\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        assert!(parse("1 --plant nonsense").is_err());
        assert!(parse("1 2").is_err());
    }

    #[test]
    fn the_workspace_regression_file_parses() {
        load(&default_path()).expect("sim/regressions.txt parses");
    }
}
