//! The latency plot: percentile curves of herald against the bare-consumer floor,
//! written as SVG and rendered to PNG.

use std::path::Path;

/// One curve: a label and its sorted samples in ms.
pub struct Curve<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub sorted_ms: &'a [f64],
}

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
/// The x axis shows percentiles on a "nines" scale: 0, 90, 99, 99.9, 99.99.
const MAX_NINES: f64 = 4.0;

fn nines(p: f64) -> f64 {
    (-(1.0 - p).max(1e-4).log10()).min(MAX_NINES)
}

/// The SVG text of the plot.
pub fn svg(title: &str, curves: &[Curve<'_>]) -> String {
    let max_ms = curves
        .iter()
        .filter_map(|c| c.sorted_ms.last())
        .fold(1.0f64, |a, b| a.max(*b))
        * 1.1;
    let x = |n: f64| LEFT + (W - LEFT - RIGHT) * n / MAX_NINES;
    let y = |ms: f64| TOP + (H - TOP - BOTTOM) * (1.0 - ms / max_ms);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="28" font-size="18" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        escape(title)
    );
    for (n, label) in [
        (0.0, "0"),
        (1.0, "90"),
        (2.0, "99"),
        (3.0, "99.9"),
        (4.0, "99.99"),
    ] {
        out += &format!(
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" font-size="13" text-anchor="middle">{label}</text>
"##,
            x(n),
            TOP,
            H - BOTTOM,
            H - BOTTOM + 20.0
        );
    }
    for i in 0..=5 {
        let ms = max_ms * f64::from(i) / 5.0;
        out += &format!(
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" font-size="13" text-anchor="end">{ms:.1}</text>
"##,
            y(ms),
            W - RIGHT,
            LEFT - 8.0,
            y(ms) + 4.0
        );
    }
    out += &format!(
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">percentile</text>
<text x="20" y="{}" font-size="14" text-anchor="middle" transform="rotate(-90 20 {})">latency, produce → received (ms)</text>
"#,
        W / 2.0,
        H - 20.0,
        H / 2.0,
        H / 2.0
    );
    for (i, c) in curves.iter().enumerate() {
        let n = c.sorted_ms.len();
        if n == 0 {
            continue;
        }
        let step = (n / 2000).max(1);
        let points: Vec<String> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| {
                let p = (k + 1) as f64 / n as f64;
                format!("{:.1},{:.1}", x(nines(p.min(0.99999))), y(c.sorted_ms[k]))
            })
            .collect();
        out += &format!(
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>
<rect x="{}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{}" font-size="13">{}</text>
"#,
            c.color,
            points.join(" "),
            LEFT + 20.0,
            TOP + 14.0 + 20.0 * i as f64,
            c.color,
            LEFT + 40.0,
            TOP + 20.0 + 20.0 * i as f64,
            escape(c.label)
        );
    }
    out + "</svg>\n"
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `svg` next to `png_path` (same name, .svg) and renders it to PNG.
pub fn write(svg_text: &str, png_path: &Path) -> Result<(), String> {
    std::fs::write(png_path.with_extension("svg"), svg_text).map_err(|e| e.to_string())?;
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg_text, &options).map_err(|e| e.to_string())?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty plot")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.save_png(png_path).map_err(|e| e.to_string())
}
