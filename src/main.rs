//! The `gantry` command line. The only place that prints, exits with codes
//! and decides about colour; all work is in the library crates.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use gantry::check_files;
use gantry_lang::diagnostic;

#[derive(Parser)]
#[command(name = "gantry", version, about = "Hardware/software co-design for AI infrastructure")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Copy, Clone, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Check .gantry files: syntax, names, units, shapes. Exit 0 if clean, 1 on errors.
    Check {
        /// Files to check (their imports are checked too).
        #[arg(required = true)]
        files: Vec<String>,
        /// Output format for diagnostics.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Print the resolved program after a clean check.
        #[arg(long, short)]
        verbose: bool,
        /// Extra folders to resolve imports against.
        #[arg(long = "lib")]
        lib: Vec<PathBuf>,
        /// Colour in diagnostics (auto: only on a terminal).
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Format .gantry files canonically (in place, or check with --check).
    Fmt {
        #[arg(required = true)]
        files: Vec<String>,
        /// Do not write; exit 1 if any file is not formatted.
        #[arg(long)]
        check: bool,
        /// Print the formatted text instead of writing it.
        #[arg(long)]
        stdout: bool,
    },
    /// Explain a diagnostic code (e.g. `gantry explain L040`), or list them all.
    Explain { code: Option<String> },
}

fn use_color(c: Color) -> bool {
    match c {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check {
            files,
            format,
            verbose,
            lib,
            color,
        } => {
            let checked = check_files(&files, &lib);
            match format {
                Format::Json => {
                    let json = diagnostic::to_json(&checked.diagnostics, &checked.sources);
                    println!("{}", serde_json::to_string_pretty(&json).unwrap_or_else(|_| "[]".into()));
                }
                Format::Text => {
                    eprint!("{}", checked.render(use_color(color)));
                    if verbose && !checked.has_errors() {
                        print!("{}", checked.program.summary());
                    }
                    let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
                    let warnings = checked.diagnostics.len() - errors;
                    if errors > 0 || warnings > 0 {
                        eprintln!("{errors} error{}, {warnings} warning{}", plural(errors), plural(warnings));
                    }
                }
            }
            if checked.has_errors() { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Command::Fmt { files, check, stdout } => fmt_files(&files, check, stdout),
        Command::Explain { code } => explain(code.as_deref()),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn explain(code: Option<&str>) -> ExitCode {
    let all = gantry_lang::diagnostic::Code::ALL;
    match code {
        None => {
            for c in all {
                println!("{c}  {}", c.description());
            }
            ExitCode::SUCCESS
        }
        Some(want) => match all.iter().find(|c| c.as_str().eq_ignore_ascii_case(want)) {
            Some(c) => {
                println!("{c}: {}", c.description());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: unknown diagnostic code `{want}`; `gantry explain` lists them");
                ExitCode::from(2)
            }
        },
    }
}

fn fmt_files(files: &[String], check: bool, stdout: bool) -> ExitCode {
    let mut status = 0u8;
    for f in files {
        let text = match std::fs::read(f).map(String::from_utf8) {
            Ok(Ok(t)) => t,
            Ok(Err(_)) => {
                eprintln!("error[L005]: `{f}` is not UTF-8 text");
                status = status.max(1);
                continue;
            }
            Err(e) => {
                eprintln!("error: cannot read `{f}`: {e}");
                status = 2;
                continue;
            }
        };
        match gantry_lang::fmt::format_source(&text) {
            Ok(out) => {
                if stdout {
                    print!("{out}");
                } else if check {
                    if out != text {
                        eprintln!("{f}: not formatted");
                        status = status.max(1);
                    }
                } else if out != text
                    && let Err(e) = std::fs::write(f, &out)
                {
                    eprintln!("error: cannot write `{f}`: {e}");
                    status = 2;
                }
            }
            Err(diags) => {
                let mut sources = gantry_lang::source::SourceMap::default();
                let id = sources.add(f.clone(), text.clone());
                let diags: Vec<_> = diags.into_iter().map(|d| d.in_file(id)).collect();
                eprint!("{}", diagnostic::render(&diags, &sources, use_color(Color::Auto)));
                eprintln!("{f}: not formatted because it has syntax errors");
                status = status.max(1);
            }
        }
    }
    ExitCode::from(status)
}
