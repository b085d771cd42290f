//! Instantiating a workload at a small scale (`--scale`).
//!
//! A scaled workload is made by *re-checking source*, never by editing a
//! graph: a generated file imports the original and declares
//!
//! ```text
//! workload gantry_scaled_workload {
//!   model NAME(arg = value, ...)   // the original arguments, overridden
//!   PHASE { ... }                  // the original settings, overridden
//! }
//! ```
//!
//! so every shape rule of the checker applies to the scaled model exactly
//! as to the original. Keys: any argument of the model (`layers`,
//! `d_model`, ...); `batch` (the phase's batch or global batch); `seq`
//! (train `seq`, prefill `prompt`, decode `context` and `prompt`). One key
//! acts on the checked graph instead: `rows = R` caps every
//! `embedding_bag` table at `R` rows (rows change no shape, only the size
//! of the tables, so the capped graph is the graph of smaller tables).

use gantry_lang::check;
use gantry_lang::program::{OpKind, Phase, Workload};
use gantry_lang::source::{LoadError, Loader};

use crate::error::{RCode, RuntimeError};

/// Name of the generated workload.
pub const SCALED: &str = "gantry_scaled_workload";

/// Parsed `--scale` overrides, in the order given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scale {
    pub args: Vec<(String, String)>,
}

fn bad(message: String) -> RuntimeError {
    RuntimeError::new(RCode::R004, message)
}

impl Scale {
    /// Parses `layers=2,d_model=256,bottom=[64, 32]` (commas inside
    /// brackets or parentheses belong to the value).
    pub fn parse(s: &str) -> Result<Scale, RuntimeError> {
        let mut parts = Vec::new();
        let (mut depth, mut cur) = (0i32, String::new());
        for c in s.chars() {
            match c {
                '[' | '(' | '{' => depth += 1,
                ']' | ')' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur);
        let mut args: Vec<(String, String)> = Vec::new();
        for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let Some((k, v)) = p.split_once('=') else {
                return Err(bad(format!("`{p}` is not `name=value`")).with_help(
                    "write overrides as `--scale layers=2,d_model=256,seq=16,batch=4`",
                ));
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty()
                || v.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(bad(format!("`{p}` is not `name=value`")));
            }
            if args.iter().any(|(a, _)| a == k) {
                return Err(bad(format!("`{k}` is scaled twice")));
            }
            args.push((k.to_string(), v.to_string()));
        }
        Ok(Scale { args })
    }

    /// `self` with the keys of `over` replaced or added (`--scale` over a
    /// plan's `simulate`).
    pub fn overridden(mut self, over: &Scale) -> Scale {
        for (k, v) in &over.args {
            match self.args.iter_mut().find(|(a, _)| a == k) {
                Some(slot) => slot.1 = v.clone(),
                None => self.args.push((k.clone(), v.clone())),
            }
        }
        self
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

struct Overlay<'a> {
    inner: &'a dyn Loader,
    name: String,
    text: String,
}

impl Loader for Overlay<'_> {
    fn resolve(&self, importer: &str, path: &str) -> Option<String> {
        if path == self.name {
            Some(self.name.clone())
        } else {
            self.inner.resolve(importer, path)
        }
    }
    fn load(&self, name: &str) -> Result<String, LoadError> {
        if name == self.name {
            Ok(self.text.clone())
        } else {
            self.inner.load(name)
        }
    }
}

fn int_arg(scale: &Scale, k: &str) -> Result<Option<u64>, RuntimeError> {
    scale
        .get(k)
        .map(|v| {
            v.replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|x| *x > 0)
                .ok_or_else(|| bad(format!("`{k}` takes a positive whole number, got `{v}`")))
        })
        .transpose()
}

/// The source of the generated workload declaration.
pub fn scaled_source(
    w: &Workload,
    source_file: &str,
    scale: &Scale,
) -> Result<String, RuntimeError> {
    let mut args = w.model.args.clone();
    for (k, v) in &scale.args {
        if matches!(k.as_str(), "batch" | "seq" | "rows") {
            continue;
        }
        if !args.contains_key(k) {
            let known: Vec<&str> = args.keys().map(|s| s.as_str()).collect();
            return Err(
                bad(format!("model `{}` has no argument `{k}`", w.model.name)).with_help(format!(
                    "arguments: {}; also `batch`, `seq` and `rows` (embedding-table rows)",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )),
            );
        }
        args.insert(k.clone(), v.clone());
    }
    let batch = int_arg(scale, "batch")?;
    let seq = int_arg(scale, "seq")?;
    let dtype = w.dtype.name();
    let phase = match &w.phase {
        Phase::Train {
            global_batch,
            seq: s,
            optimizer,
        } => {
            let s = seq
                .or(*s)
                .map(|s| format!(", seq = {s}"))
                .unwrap_or_default();
            format!(
                "train {{ global_batch = {}{s}, dtype = {dtype}, optimizer = {} }}",
                batch.unwrap_or(*global_batch),
                optimizer.name()
            )
        }
        Phase::Prefill { batch: b, prompt } => {
            let p = seq
                .or(*prompt)
                .map(|p| format!(", prompt = {p}"))
                .unwrap_or_default();
            format!(
                "prefill {{ batch = {}{p}, dtype = {dtype} }}",
                batch.unwrap_or(*b)
            )
        }
        Phase::Decode {
            batch: b,
            context,
            generate,
            prompt,
        } => {
            let mut s = format!(
                "decode {{ batch = {}, context = {}",
                batch.unwrap_or(*b),
                seq.unwrap_or(*context)
            );
            if let Some(p) = seq.or(*prompt) {
                s.push_str(&format!(", prompt = {p}"));
            }
            if let Some(g) = generate {
                s.push_str(&format!(", generate = {g}"));
            }
            s.push_str(&format!(", dtype = {dtype} }}"));
            s
        }
    };
    let call: Vec<String> = args.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    Ok(format!(
        "import {source_file:?}\n\nworkload {SCALED} {{\n  model {}({})\n  {phase}\n}}\n",
        w.model.name,
        call.join(", ")
    ))
}

/// `w` (declared in `source_file`) at the scale of `scale`.
pub fn scaled_workload(
    w: &Workload,
    source_file: &str,
    scale: &Scale,
    loader: &dyn Loader,
) -> Result<Workload, RuntimeError> {
    let text = scaled_source(w, source_file, scale)?;
    let name = format!("{source_file}#scaled");
    let overlay = Overlay {
        inner: loader,
        name: name.clone(),
        text: text.clone(),
    };
    let checked = check::check(&[name], &overlay);
    if checked.has_errors() {
        return Err(bad(format!(
            "the scaled workload does not check:\n{}",
            checked.render(false)
        ))
        .with_help(format!("the generated declaration was:\n{text}")));
    }
    let mut scaled = checked
        .program
        .workloads
        .iter()
        .find(|(k, _)| k.as_str() == SCALED || k.starts_with(&format!("{SCALED}(")))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| bad("the scaled workload is missing after checking".into()))?;
    if let Some(rows) = int_arg(scale, "rows")? {
        cap_rows(&mut scaled, rows);
    }
    scaled.name = w.name.clone();
    Ok(scaled)
}

/// Caps every embedding-bag table at `rows` rows.
pub fn cap_rows(w: &mut Workload, rows: u64) {
    fn walk(items: &mut [gantry_lang::program::Item], rows: u64) {
        for it in items {
            match it {
                gantry_lang::program::Item::Op(op) => {
                    if let OpKind::EmbeddingBag { tables } = &mut op.kind {
                        for t in tables {
                            t.rows = t.rows.min(rows);
                        }
                    }
                }
                gantry_lang::program::Item::Repeat(r) => walk(&mut r.body, rows),
            }
        }
    }
    walk(&mut w.model.graph.body, rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_brackets_together() {
        let s = Scale::parse("layers=2, bottom=[64, 32],seq=16").expect("parses");
        assert_eq!(
            s.args,
            vec![
                ("layers".into(), "2".into()),
                ("bottom".into(), "[64, 32]".into()),
                ("seq".into(), "16".into())
            ]
        );
        assert_eq!(Scale::parse("layers").unwrap_err().code, RCode::R004);
        assert_eq!(Scale::parse("a=1,a=2").unwrap_err().code, RCode::R004);
    }

    #[test]
    fn scaled_model_is_rechecked() {
        let src = "model M(d, layers = 4) {\n  input t: i32[batch, seq]\n  x = embedding(t, 100, d)\n  repeat layers {\n    x = x + linear(rmsnorm(x), d, d)\n  }\n  output o = x\n}\nworkload w {\n  model M(d = 64)\n  train { seq = 128, global_batch = 32 }\n}\n";
        let mut l = gantry_lang::source::MemLoader::default();
        l.files.insert("m.gantry".into(), src.into());
        let c = check::check(&["m.gantry".to_string()], &l);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = &c.program.workloads["w"];
        let s = Scale::parse("d=8,layers=2,seq=4,batch=2").expect("parses");
        let small = scaled_workload(w, "m.gantry", &s, &l).expect("scales");
        assert_eq!(small.bindings.get("batch"), Some(&2));
        assert_eq!(small.bindings.get("seq"), Some(&4));
        assert_eq!(small.model.args.get("d").map(|s| s.as_str()), Some("8"));
        let e = scaled_workload(w, "m.gantry", &Scale::parse("width=3").expect("parses"), &l)
            .unwrap_err();
        assert_eq!(e.code, RCode::R004);
        assert!(e.message.contains("no argument `width`"), "{}", e.message);
    }
}
