//! Request files: the rows a `serve` workload replays.
//!
//! Two kinds of file feed the serving simulator: an arrivals trace
//! (`arrival_s,prompt_tokens,generate_tokens`, read by the command line,
//! `compiler::serve::parse_trace`) and a lengths file for `prompt =
//! trace("file.csv")` / `generate = trace("file.csv")` (read by the
//! checker, here), whose rows give each request's token counts in order
//! while the arrivals come from the workload's own process. A lengths file
//! may also be an arrivals trace: with three fields per row the first (the
//! arrival time) is ignored. Both parsers share [`token_count`], so a
//! count means the same thing in either file.

/// The largest token count a request may have (2^24), as for the
/// distributions' lengths.
pub const MAX_TOKENS: u64 = 1 << 24;

/// Parses one token count: a whole number from 1 to [`MAX_TOKENS`].
pub fn token_count(s: &str) -> Option<u32> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_TOKENS).contains(&n) => Some(n as u32),
        _ => None,
    }
}

/// A malformed row: its 1-based line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub line: usize,
    pub what: String,
}

/// Parses a lengths file: one request per line, `prompt_tokens,
/// generate_tokens` (or `arrival_s,prompt_tokens,generate_tokens`, the
/// arrival ignored); a first line that is not numbers is a header; blank
/// lines and lines starting with `#` are skipped. At least one row.
pub fn parse_lengths(text: &str) -> Result<Vec<(u32, u32)>, RowError> {
    let mut rows = Vec::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        let header = first && fields.iter().all(|f| f.parse::<f64>().is_err());
        first = false;
        if header {
            continue;
        }
        let err = |what: String| RowError { line: i + 1, what };
        let counts = match fields.len() {
            2 => &fields[..],
            3 => &fields[1..],
            n => {
                return Err(err(format!(
                    "expected 2 fields (prompt_tokens,generate_tokens), found {n}"
                )));
            }
        };
        let count = |s: &str| {
            token_count(s)
                .ok_or_else(|| err(format!("`{s}` is not a token count from 1 to {MAX_TOKENS}")))
        };
        rows.push((count(counts[0])?, count(counts[1])?));
    }
    if rows.is_empty() {
        return Err(RowError {
            line: 0,
            what: "the file has no rows".into(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_in_order_with_header_comments_and_arrivals() {
        let two = parse_lengths("prompt,generate\n# a comment\n10,5\n\n 20 , 1\n").unwrap();
        assert_eq!(two, vec![(10, 5), (20, 1)]);
        let three = parse_lengths("0.0,7,3\n0.5,8,4\n").unwrap();
        assert_eq!(three, vec![(7, 3), (8, 4)]);
    }

    #[test]
    fn bad_rows_name_their_line() {
        assert_eq!(parse_lengths("10,5\n10,0\n").unwrap_err().line, 2);
        assert_eq!(parse_lengths("10,5\n10\n").unwrap_err().line, 2);
        assert_eq!(parse_lengths("1,2,3,4\n").unwrap_err().line, 1);
        assert_eq!(parse_lengths("10,5\n10,16777217\n").unwrap_err().line, 2);
        assert_eq!(parse_lengths("x,y\n").unwrap_err().line, 0);
        assert_eq!(token_count("16777216"), Some(1 << 24));
        assert_eq!(token_count("-1"), None);
    }
}
