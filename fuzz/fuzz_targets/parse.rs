//! The front end on arbitrary bytes: the input is checked as the root file
//! of a program whose imports are the bundled standard library (so the
//! fuzzer reaches the checker, not only the parser), then formatted.
//! Neither may panic, and every diagnostic span must lie inside its file.
#![no_main]

use std::sync::OnceLock;

use gantry_lang::check::check;
use gantry_lang::source::MemLoader;
use libfuzzer_sys::fuzz_target;

/// The bundled `stdlib/`, loaded once, under the names imports use.
fn stdlib() -> &'static MemLoader {
    static LIB: OnceLock<MemLoader> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut l = MemLoader::default();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut stack = vec![root.join("stdlib")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "gantry")
                    && let (Ok(rel), Ok(text)) =
                        (p.strip_prefix(&root), std::fs::read_to_string(&p))
                {
                    l.files
                        .insert(rel.to_string_lossy().replace('\\', "/"), text);
                }
            }
        }
        l
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut l = stdlib().clone();
    l.files.insert("input.gantry".into(), text.to_string());
    let c = check(&["input.gantry".to_string()], &l);
    for d in &c.diagnostics {
        for span in std::iter::once(d.span).chain(d.labels.iter().map(|l| l.span)) {
            let file = c
                .sources
                .get(span.file)
                .expect("a diagnostic points at a file");
            assert!(span.start <= span.end && span.end as usize <= file.text.len());
        }
    }
    let _ = c.render(false);
    let _ = gantry_lang::fmt::format_source(text);
});
