//! The bearer tokens `serve` accepts, read once from the token file: one token per line, an
//! optional name after the first space, `ro:` in front of a read-only token, `#` comments and
//! blank lines skipped. Only SHA-256 digests of the tokens are kept, and a presented token is
//! compared with every one of them in constant time.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Fewest characters a token may have: 16 random characters are beyond guessing online.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The marker in front of a read-only token in the file (not part of the token).
pub const READ_ONLY_MARKER: &str = "ro:";

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every call.
    ReadWrite,
    /// Reads only: the Get, List, Watch and Export calls, and the dashboard's views.
    ReadOnly,
}

/// Who made a call, as the token file names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name from the file (or `line N` when it has none); never the token.
    pub name: String,
    /// What the token allows.
    pub access: Access,
}

struct Entry {
    digest: [u8; 32],
    caller: Caller,
}

/// The accepted tokens.
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

/// Why a token file cannot be used. No variant carries a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read the auth token file {}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line breaks the format.
    #[error("auth token file {}, line {line}: {rule}", path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// The rule it breaks.
        rule: String,
    },
    /// The file holds no token, which would lock every caller out.
    #[error("auth token file {} holds no token", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl Tokens {
    /// Reads and checks the token file at `path`.
    pub fn read(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|problem| match problem {
            Problem::Line(line, rule) => TokenFileError::BadLine {
                path: path.to_owned(),
                line,
                rule,
            },
            Problem::Empty => TokenFileError::Empty {
                path: path.to_owned(),
            },
        })
    }

    fn parse(text: &str) -> Result<Self, Problem> {
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (token, name) = match trimmed.split_once(char::is_whitespace) {
                Some((token, name)) => (token, Some(name.trim())),
                None => (trimmed, None),
            };
            let (token, access) = match token.strip_prefix(READ_ONLY_MARKER) {
                Some(token) => (token, Access::ReadOnly),
                None => (token, Access::ReadWrite),
            };
            check_token(token).map_err(|rule| Problem::Line(line, rule))?;
            let digest = digest(token.as_bytes());
            if let Some((first, _)) = entries.iter().find(|(_, entry)| entry.digest == digest) {
                return Err(Problem::Line(
                    line,
                    format!("the token repeats the one on line {first}"),
                ));
            }
            let name = name
                .filter(|name| !name.is_empty())
                .map_or_else(|| format!("line {line}"), str::to_owned);
            entries.push((
                line,
                Entry {
                    digest,
                    caller: Caller { name, access },
                },
            ));
        }
        if entries.is_empty() {
            return Err(Problem::Empty);
        }
        Ok(Self {
            entries: entries.into_iter().map(|(_, entry)| entry).collect(),
        })
    }

    /// The caller whose token `presented` is, if any. Every stored digest is compared, each in
    /// constant time, so the time taken says nothing about which token came close.
    pub fn verify(&self, presented: &[u8]) -> Option<&Caller> {
        let presented = digest(presented);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(&entry.caller);
            }
        }
        found
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no token (never true for a file that was read).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

enum Problem {
    Line(usize, String),
    Empty,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A token must fit in an `authorization` header as sent: visible ASCII, no spaces.
fn check_token(token: &str) -> Result<(), String> {
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("a token must be printable ASCII without spaces".to_owned());
    }
    if token.len() < MIN_TOKEN_CHARS {
        return Err(format!(
            "a token must have at least {MIN_TOKEN_CHARS} characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITER: &str = "0123456789abcdef-writer";
    const READER: &str = "0123456789abcdef-reader";

    fn parsed(text: &str) -> Tokens {
        match Tokens::parse(text) {
            Ok(tokens) => tokens,
            Err(Problem::Line(line, rule)) => panic!("line {line}: {rule}"),
            Err(Problem::Empty) => panic!("no tokens"),
        }
    }

    fn refusal(text: &str) -> (usize, String) {
        match Tokens::parse(text) {
            Err(Problem::Line(line, rule)) => (line, rule),
            Err(Problem::Empty) => (0, "empty".to_owned()),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn tokens_are_named_and_read_only_ones_are_marked() {
        let tokens = parsed(&format!(
            "# the team's tokens\n\n{WRITER} deploy bot\nro:{READER}\n"
        ));
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.verify(WRITER.as_bytes()),
            Some(&Caller {
                name: "deploy bot".to_owned(),
                access: Access::ReadWrite
            })
        );
        assert_eq!(
            tokens.verify(READER.as_bytes()),
            Some(&Caller {
                name: "line 4".to_owned(),
                access: Access::ReadOnly
            })
        );
    }

    #[test]
    fn the_read_only_marker_is_not_part_of_the_token() {
        let tokens = parsed(&format!("ro:{READER} viewer"));
        assert!(tokens
            .verify(format!("{READ_ONLY_MARKER}{READER}").as_bytes())
            .is_none());
        assert!(tokens.verify(READER.as_bytes()).is_some());
    }

    #[test]
    fn a_wrong_or_partial_token_matches_nothing() {
        let tokens = parsed(WRITER);
        assert!(tokens.verify(b"").is_none());
        assert!(tokens
            .verify(&WRITER.as_bytes()[..WRITER.len() - 1])
            .is_none());
        assert!(tokens.verify(format!("{WRITER}x").as_bytes()).is_none());
    }

    #[test]
    fn short_repeated_or_unprintable_tokens_are_refused_by_line() {
        assert_eq!(refusal("short-token").0, 1);
        assert!(refusal("short-token").1.contains("at least 16"));
        let (line, rule) = refusal(&format!("{WRITER} a\n{WRITER} b"));
        assert_eq!(line, 2);
        assert!(rule.contains("line 1"), "{rule}");
        assert_eq!(refusal("0123456789abcdef\u{e9}").0, 1);
        assert_eq!(refusal("# only a comment\n").1, "empty");
    }

    #[test]
    fn errors_never_carry_the_token() {
        let err = Tokens::read(Path::new("/nonexistent/tokens")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tokens"));
        let secret = "abc\u{7f}def0123456789secret";
        let (_, rule) = refusal(secret);
        assert!(!rule.contains("secret"));
    }
}
