//! An HTML timeline of a client history, for reading a linearizability violation by eye.
//!
//! One lane per client (split into sub-lanes when a client's operations overlap, as after a
//! timeout), each operation a bar from its call to its return. Operations with an unknown
//! outcome run to the right edge, dashed and marked "?". Hovering a bar shows the full input,
//! output and times (the `title` attribute). The page is self-contained: inline CSS, no script.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::linearizability::Operation;

/// Renders `history` as a self-contained HTML page titled `title`, with the operations at the
/// indices in `highlight` drawn in red (indices out of range are ignored).
pub fn render_html(history: &[Operation], highlight: &[usize], title: &str) -> String {
    let start_ns = history.iter().map(|op| op.call).min().unwrap_or(0);
    let last_ns = history
        .iter()
        .map(|op| op.ret.unwrap_or(op.call).max(op.call))
        .max()
        .unwrap_or(0);
    // Unknown outcomes run to the edge: leave them a little room beyond the last event.
    let end_ns = last_ns + (last_ns - start_ns) / 20 + 1;
    let span_ns = (end_ns - start_ns) as f64;
    let percent = |ns: u64| (ns.saturating_sub(start_ns)) as f64 * 100.0 / span_ns;

    let mut clients: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        clients.entry(op.client).or_default().push(index);
    }

    let mut page = String::new();
    let title = escape(title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
    let _ = writeln!(
        page,
        "<p class=\"legend\">{} operations by {} clients, from {} ns to {} ns. <span class=\"swatch ok\"></span> completed <span class=\"swatch unknown\"></span> unknown outcome (?) <span class=\"swatch highlight\"></span> highlighted. Hover a bar for details.</p>",
        history.len(),
        clients.len(),
        start_ns,
        last_ns
    );
    page.push_str("<div class=\"timeline\">\n");
    for (client, indices) in &clients {
        // Sub-lanes: each op goes to the first sub-lane whose last op ended before its call.
        let mut sorted = indices.clone();
        sorted.sort_by_key(|&index| (history[index].call, index));
        let mut lane_ends: Vec<u64> = Vec::new();
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        for index in sorted {
            let op = &history[index];
            let op_end = op.ret.map_or(u64::MAX, |ret| ret.max(op.call));
            let lane = match lane_ends.iter().position(|&end| end < op.call) {
                Some(lane) => lane,
                None => {
                    lane_ends.push(0);
                    lanes.push(Vec::new());
                    lanes.len() - 1
                }
            };
            lane_ends[lane] = op_end;
            lanes[lane].push(index);
        }
        for (lane_number, lane) in lanes.iter().enumerate() {
            let label = if lane_number == 0 {
                format!("client {client}")
            } else {
                String::new()
            };
            let _ = writeln!(
                page,
                "<div class=\"lane\"><div class=\"label\">{label}</div><div class=\"track\">"
            );
            for &index in lane {
                let op = &history[index];
                let left = percent(op.call);
                let (width, unknown) = match (op.ret, &op.output) {
                    (Some(ret), Some(_)) => ((percent(ret.max(op.call)) - left).max(0.3), false),
                    _ => (100.0 - left, true),
                };
                let mut classes = String::from("op");
                if unknown {
                    classes.push_str(" unknown");
                }
                if highlight.contains(&index) {
                    classes.push_str(" highlight");
                }
                let output = match &op.output {
                    Some(output) => output.to_string(),
                    None => "?".to_string(),
                };
                let hover = format!("#{index} {op}");
                let _ = writeln!(
                    page,
                    "<div id=\"op-{index}\" class=\"{classes}\" style=\"left:{left:.3}%;width:{width:.3}%\" title=\"{}\">#{index} {} {} &rarr; {}</div>",
                    escape(&hover),
                    escape(&format!("{:?}", op.key)),
                    escape(&op.input.to_string()),
                    escape(&output),
                );
            }
            page.push_str("</div></div>\n");
        }
    }
    page.push_str("</div>\n");
    let highlighted: Vec<usize> = highlight
        .iter()
        .copied()
        .filter(|&index| index < history.len())
        .collect();
    if !highlighted.is_empty() {
        page.push_str("<h2>Highlighted operations</h2>\n<ol class=\"highlighted\">\n");
        for index in highlighted {
            let _ = writeln!(
                page,
                "<li><a href=\"#op-{index}\">#{index}</a> {}</li>",
                escape(&history[index].to_string())
            );
        }
        page.push_str("</ol>\n");
    }
    page.push_str("</body>\n</html>\n");
    page
}

/// The page's stylesheet.
const STYLE: &str = "
body { font-family: sans-serif; margin: 1em; }
.legend { color: #444; }
.swatch { display: inline-block; width: 1.5em; height: 0.8em; border: 1px solid #246; }
.swatch.ok, .op { background: #9cf; }
.swatch.unknown { background: #eee; border-style: dashed; }
.swatch.highlight { background: #e33; }
.timeline { border-top: 1px solid #ccc; }
.lane { display: flex; border-bottom: 1px solid #eee; height: 1.6em; }
.label { width: 7em; flex: none; font-size: 0.8em; line-height: 2em; }
.track { position: relative; flex: auto; }
.op { position: absolute; top: 0.15em; height: 1.3em; overflow: hidden; white-space: nowrap;
      font-size: 0.7em; line-height: 1.3em; border: 1px solid #246; border-radius: 3px;
      box-sizing: border-box; padding: 0 2px; }
.op.unknown { background: #eee; border-style: dashed; border-right: none; }
.op.highlight { background: #e33; color: #fff; border-color: #900; z-index: 1; }
.op:hover { z-index: 2; outline: 2px solid #000; }
";

/// Escapes text for HTML content and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{KvInput, KvOutput};

    fn history() -> Vec<Operation> {
        vec![
            Operation {
                client: 1,
                key: "k".into(),
                input: KvInput::Put {
                    value: b"<script>alert(\"x\")</script>&'".to_vec(),
                },
                call: 100,
                ret: Some(300),
                output: Some(KvOutput::Put { mod_index: 4 }),
            },
            Operation {
                client: 2,
                key: "<k2>".into(),
                input: KvInput::Get,
                call: 150,
                ret: Some(200),
                output: Some(KvOutput::Get {
                    value: None,
                    mod_index: 0,
                }),
            },
            // Overlaps client 1's first op: goes to a second sub-lane.
            Operation {
                client: 1,
                key: "k".into(),
                input: KvInput::Delete,
                call: 250,
                ret: None,
                output: None,
            },
        ]
    }

    /// Counts opening and closing tags of `name` (a crude but sufficient balance check for the
    /// elements this module emits).
    fn tag_balance(page: &str, name: &str) -> (usize, usize) {
        let opening =
            page.matches(&format!("<{name}>")).count() + page.matches(&format!("<{name} ")).count();
        let closing = page.matches(&format!("</{name}>")).count();
        (opening, closing)
    }

    #[test]
    fn page_contains_every_op_and_balanced_tags() {
        let page = render_html(&history(), &[1], "run <seed 7>");
        for index in 0..3 {
            assert!(
                page.contains(&format!("id=\"op-{index}\"")),
                "op {index} missing"
            );
        }
        for name in [
            "html", "head", "title", "style", "body", "h1", "h2", "p", "div", "span", "ol", "li",
            "a",
        ] {
            let (opening, closing) = tag_balance(&page, name);
            assert_eq!(
                opening, closing,
                "<{name}> opened {opening} closed {closing}"
            );
        }
        assert_eq!(
            tag_balance(&page, "div").0,
            3 + 3 * 3 + 1,
            "3 ops, 3 lanes of 3 divs, 1 timeline"
        );
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            !page.contains("<script"),
            "no script, and values are escaped"
        );
    }

    #[test]
    fn values_and_titles_are_escaped() {
        let page = render_html(&history(), &[], "run <seed 7> & \"friends\"");
        assert!(page.contains("<title>run &lt;seed 7&gt; &amp; &quot;friends&quot;</title>"));
        assert!(page.contains("&lt;script&gt;alert(\\&quot;x\\&quot;)&lt;/script&gt;&amp;&#39;"));
        assert!(page.contains("&quot;&lt;k2&gt;&quot;"));
        assert!(!page.contains("<k2>"));
    }

    #[test]
    fn highlighted_and_unknown_ops_are_marked() {
        let page = render_html(&history(), &[0, 99], "t");
        assert!(page.contains("id=\"op-0\" class=\"op highlight\""));
        assert!(page.contains("id=\"op-1\" class=\"op\""));
        assert!(page.contains("id=\"op-2\" class=\"op unknown\""));
        // The unknown op runs to the right edge.
        let unknown = &page[page.find("id=\"op-2\"").expect("op 2")..];
        let style = &unknown[unknown.find("style=\"").expect("style")..];
        let left: f64 = style["style=\"left:".len()..style.find('%').expect("%")]
            .parse()
            .expect("left");
        let width_at = style.find("width:").expect("width") + "width:".len();
        let width: f64 = style[width_at..width_at + style[width_at..].find('%').expect("%")]
            .parse()
            .expect("width");
        assert!(
            (left + width - 100.0).abs() < 0.01,
            "left {left} width {width}"
        );
        // The out-of-range highlight is ignored, the valid one is listed.
        assert!(page.contains("<li><a href=\"#op-0\">#0</a>"));
        assert!(!page.contains("#op-99"));
    }

    #[test]
    fn empty_history_renders() {
        let page = render_html(&[], &[], "empty");
        assert!(page.contains("0 operations by 0 clients"));
        let (opening, closing) = tag_balance(&page, "div");
        assert_eq!((opening, closing), (1, 1));
    }
}
