//! Request files: the rows a `serve` workload replays.
//!
//! `trace("file.csv")` names a file of recorded requests in two places: as
//! the arrivals (`arrivals = trace("file.csv")`, rows `arrival_s,
//! prompt_tokens,generate_tokens`, each request at its time) and as the
//! lengths (`prompt = trace("file.csv")`, `generate = trace("file.csv")`,
//! rows `prompt_tokens,generate_tokens` or a whole trace whose times are
//! ignored, replayed in request order under the workload's own arrivals).
//! The checker reads both through the loader that reads imports, when the
//! naming file is loaded, so the rows are part of the checked program:
//! `plan`, `validate`, `calibrate` and studies see the same requests and
//! none reads a file of its own. Both parsers share the row reader and
//! [`token_count`], so a line means the same thing in either file.

/// The largest token count a request may have (2^24), as for the
/// distributions' lengths.
pub const MAX_TOKENS: u64 = 1 << 24;

/// The latest arrival time a trace may hold, in seconds (about 317 years:
/// Unix timestamps fit). A double's step at 1e10 s is 2 us; at 1e13 s it is
/// 2 ms and at 1e300 s a request's whole latency vanished (TTFT 0.0 ms).
pub const MAX_ARRIVAL: f64 = 1e10;

/// Parses one token count: a whole number from 1 to [`MAX_TOKENS`].
pub fn token_count(s: &str) -> Option<u32> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_TOKENS).contains(&n) => Some(n as u32),
        _ => None,
    }
}

/// One recorded request: when it arrived (seconds), its prompt and how
/// many tokens it generated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceRow {
    pub arrival: f64,
    pub prompt: u32,
    pub generate: u32,
}

/// A malformed row: its 1-based line (0: the file as a whole) and what is
/// wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub line: usize,
    pub what: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.what)
        } else {
            write!(f, "line {}: {}", self.line, self.what)
        }
    }
}

/// The data rows of `text`, each with its 1-based line and its
/// comma-separated fields: blank lines and lines starting with `#` are
/// skipped, and so is a first row whose fields are none of them numbers
/// (a header).
fn rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    let mut first = true;
    text.lines().enumerate().filter_map(move |(i, line)| {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        let header = first && fields.iter().all(|f| f.parse::<f64>().is_err());
        first = false;
        (!header).then_some((i + 1, fields))
    })
}

fn count(line: usize, s: &str) -> Result<u32, RowError> {
    token_count(s).ok_or_else(|| RowError {
        line,
        what: format!("`{s}` is not a token count from 1 to {MAX_TOKENS}"),
    })
}

fn no_rows() -> RowError {
    RowError {
        line: 0,
        what: "the file has no rows".into(),
    }
}

/// Parses an arrivals trace: `arrival_s,prompt_tokens,generate_tokens`
/// per line, times finite, non-negative and not decreasing.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRow>, RowError> {
    let mut out: Vec<TraceRow> = Vec::new();
    for (line, f) in rows(text) {
        let err = |what: String| RowError { line, what };
        if f.len() != 3 {
            return Err(err(format!(
                "expected 3 fields (arrival_s,prompt_tokens,generate_tokens), found {}",
                f.len()
            )));
        }
        let t: f64 = f[0]
            .parse()
            .map_err(|_| err(format!("`{}` is not a time in seconds", f[0])))?;
        if !t.is_finite() || t < 0.0 {
            return Err(err(format!(
                "arrival time {t} is not finite and non-negative"
            )));
        }
        if t > MAX_ARRIVAL {
            return Err(err(format!(
                "arrival time {t:e} s is past {MAX_ARRIVAL:e} s: times that large lose the precision latencies need"
            )));
        }
        if let Some(prev) = out.last()
            && t < prev.arrival
        {
            return Err(err(format!(
                "arrival time {t} is before the previous row's {}",
                prev.arrival
            )));
        }
        out.push(TraceRow {
            arrival: t,
            prompt: count(line, f[1])?,
            generate: count(line, f[2])?,
        });
    }
    if out.is_empty() {
        return Err(no_rows());
    }
    Ok(out)
}

/// Parses a lengths file: `prompt_tokens,generate_tokens` per line, or an
/// arrivals trace's three fields (the time ignored).
pub fn parse_lengths(text: &str) -> Result<Vec<(u32, u32)>, RowError> {
    let mut out = Vec::new();
    for (line, f) in rows(text) {
        let counts = match f.len() {
            2 => &f[..],
            3 => &f[1..],
            n => {
                return Err(RowError {
                    line,
                    what: format!("expected 2 fields (prompt_tokens,generate_tokens), found {n}"),
                });
            }
        };
        out.push((count(line, counts[0])?, count(line, counts[1])?));
    }
    if out.is_empty() {
        return Err(no_rows());
    }
    Ok(out)
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
        let t = parse_trace("t,in,out\n0,10,5\n0.5, 20, 1\n").expect("parses");
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].arrival, t[1].prompt, t[1].generate), (0.5, 20, 1));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7ace),
            ..proptest::test_runner::Config::default()
        })]
        /// Untrusted files: any text (digits, separators, signs, exponents,
        /// NaN and junk in any order) parses or is an error naming a line
        /// of the text (0 for the file as a whole), never a panic; what
        /// parses holds counts in range and times that do not decrease.
        #[test]
        fn any_text_parses_or_names_a_line(
            text in "([0-9]{0,9}|[-+.eE,#\n ]|NaN|inf|x){0,40}"
        ) {
            let lines = text.lines().count();
            match parse_trace(&text) {
                Ok(rows) => {
                    proptest::prop_assert!(rows.windows(2).all(|w| w[0].arrival <= w[1].arrival));
                    proptest::prop_assert!(rows.iter().all(|r| r.arrival.is_finite()
                        && r.arrival >= 0.0
                        && r.arrival <= MAX_ARRIVAL
                        && r.prompt >= 1
                        && r.generate >= 1));
                }
                Err(e) => proptest::prop_assert!(e.line <= lines),
            }
            match parse_lengths(&text) {
                Ok(rows) => proptest::prop_assert!(rows.iter().all(|&(p, g)| p >= 1 && g >= 1)),
                Err(e) => proptest::prop_assert!(e.line <= lines),
            }
        }
    }

    #[test]
    fn arrival_times_past_the_limit_are_refused() {
        assert!(parse_trace("0,1,1\n1e10,1,1\n").is_ok());
        let e = parse_trace("0,1,1\n1e300,1,1\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.what.contains("precision"), "{e}");
    }

    #[test]
    fn bad_rows_name_their_line() {
        assert_eq!(parse_lengths("10,5\n10,0\n").unwrap_err().line, 2);
        assert_eq!(parse_lengths("10,5\n10\n").unwrap_err().line, 2);
        assert_eq!(parse_lengths("1,2,3,4\n").unwrap_err().line, 1);
        assert_eq!(parse_lengths("10,5\n10,16777217\n").unwrap_err().line, 2);
        assert_eq!(parse_lengths("x,y\n").unwrap_err().line, 0);
        assert_eq!(parse_trace("0,10,5\n0.1,0,5").unwrap_err().line, 2);
        assert_eq!(parse_trace("1,10,5\n0.5,1,5").unwrap_err().line, 2);
        assert_eq!(parse_trace("1,10").unwrap_err().line, 1);
        assert_eq!(parse_trace("# nothing\n").unwrap_err().line, 0);
        assert!(parse_trace("NaN,1,1").is_err());
        assert!(parse_trace("-1,1,1").is_err());
        assert_eq!(token_count("16777216"), Some(1 << 24));
        assert_eq!(token_count("-1"), None);
    }
}
