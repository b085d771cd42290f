//! The self-contained HTML report of `gantry study --report DIR`: one
//! file, `DIR/report.html`, with each study's tables and its SVG plots
//! inline, no script, no stylesheet or font fetched, no image file beside
//! it, so it opens the same offline, attached to a mail or as a CI
//! artifact.
//!
//! The tables are the study's Markdown form (the same text
//! `--format markdown` prints, so the two cannot disagree) rendered by
//! `pulldown-cmark`, which escapes the text. The plots are the `--plot`
//! SVGs, inlined as `<svg>` elements (plotters writes no XML declaration
//! and escapes its text). The page is well-formed XML as well as HTML5,
//! so tests parse it with an XML parser (tests/fleet.rs).

/// One study's part of the report.
pub struct Section {
    pub name: String,
    /// Its tables, as the Markdown of `--format markdown`.
    pub markdown: String,
    /// Its plots: a caption and the SVG document.
    pub plots: Vec<(String, String)>,
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:1560px;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:0.8em;display:block;overflow-x:auto}\
th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:left}\
th{background:#f4f4f4}figure{margin:1.5em 0}figcaption{font-size:0.9em;color:#555}\
svg{max-width:100%;height:auto}";

/// Escapes text for an HTML element or attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report page.
pub fn report(title: &str, sections: &[Section]) -> String {
    use pulldown_cmark::{Event, Options, Parser, html};
    let mut body = String::new();
    for s in sections {
        body.push_str(&format!(
            "<section id=\"{}\">\n",
            escape(&format!("study-{}", s.name))
        ));
        // Raw HTML in the Markdown (a `<` in a name) stays text.
        let events = Parser::new_ext(&s.markdown, Options::ENABLE_TABLES).map(|e| match e {
            Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
            e => e,
        });
        html::push_html(&mut body, events);
        for (caption, svg) in &s.plots {
            body.push_str("<figure>\n");
            body.push_str(svg.trim());
            body.push_str(&format!(
                "\n<figcaption>{}</figcaption>\n</figure>\n",
                escape(caption)
            ));
        }
        body.push_str("</section>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n{body}</body>\n</html>\n",
        t = escape(title)
    )
}
