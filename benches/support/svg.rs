//! A small SVG line chart for a bench's time series: one or two series over time (the
//! second on its own right-hand axis), a shaded span (a warm-up) and horizontal marks
//! (per-window maxima). No plotting crate: a few hundred bytes of SVG per series.

use std::fmt::Write as _;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;

/// A series: its name, unit and colour, and points `(x, y)`.
pub struct Series {
    pub name: String,
    pub unit: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal mark on the first series' axis from `x0` to `x1` at `y`, labelled.
pub struct Mark {
    pub x0: f64,
    pub x1: f64,
    pub y: f64,
    pub label: String,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    /// On the left axis.
    pub primary: Series,
    /// On the right axis.
    pub secondary: Option<Series>,
    /// A shaded `x` span, with its label.
    pub shaded: Option<(f64, f64, String)>,
    pub marks: Vec<Mark>,
}

/// `lo..hi` widened to nice round ends, with a tick step.
fn axis(lo: f64, hi: f64) -> (f64, f64, f64) {
    let span = (hi - lo).max(1e-9);
    let raw = span / 7.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

fn range(points: &[(f64, f64)], pick: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    points
        .iter()
        .map(pick)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// A tick's label: at most three decimals, without trailing zeros.
fn tick(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    pub fn render(&self) -> String {
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let (x_lo, x_hi) = range(&self.primary.points, |p| p.0);
        // The x axis ends with the data (ticks stop before it), so a 30-minute run is not
        // drawn on a 40-minute axis.
        let x_hi = x_hi.max(x_lo + 1e-9);
        let (x_lo, _, x_step) = axis(x_lo.min(0.0), x_hi);
        let (y_lo, y_hi) = range(&self.primary.points, |p| p.1);
        // From zero, so a few per cent of growth looks like what it is.
        let (y_lo, y_hi, y_step) = axis(0.0_f64.min(y_lo), y_hi * 1.05);
        let sx = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w;
        let sy = |y: f64, lo: f64, hi: f64| TOP + plot_h - (y - lo) / (hi - lo) * plot_h;

        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>
"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        if let Some((a, b, label)) = &self.shaded {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="#eeeeee"/><text x="{:.1}" y="{}" fill="#777777">{}</text>"##,
                sx(*a),
                sx(*b) - sx(*a),
                sx(*a) + 4.0,
                TOP + 14.0,
                escape(label)
            );
        }
        // Grid and axes.
        let mut x = x_lo;
        while x <= x_hi + x_step * 1e-6 {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#dddddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                sx(x),
                TOP + plot_h,
                TOP + plot_h + 16.0,
                tick(x)
            );
            x += x_step;
        }
        let mut y = y_lo;
        while y <= y_hi + y_step / 2.0 {
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#dddddd"/><text x="{2}" y="{3:.1}" text-anchor="end" fill="{4}">{5}</text>"##,
                sy(y, y_lo, y_hi),
                LEFT + plot_w,
                LEFT - 6.0,
                sy(y, y_lo, y_hi) + 4.0,
                self.primary.colour,
                tick(y)
            );
            y += y_step;
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})" fill="{1}">{2} ({3})</text>"#,
            TOP + plot_h / 2.0,
            self.primary.colour,
            escape(&self.primary.name),
            escape(&self.primary.unit)
        );
        polyline(&mut svg, &self.primary, |p| (sx(p.0), sy(p.1, y_lo, y_hi)));
        for mark in &self.marks {
            let y = sy(mark.y, y_lo, y_hi);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#cc3311" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#cc3311" text-anchor="middle" font-size="10">{}</text>"##,
                sx(mark.x0),
                sx(mark.x1),
                (sx(mark.x0) + sx(mark.x1)) / 2.0,
                y - 5.0,
                escape(&mark.label)
            );
        }
        if let Some(second) = &self.secondary {
            let (lo, hi) = range(&second.points, |p| p.1);
            let (lo, hi, step) = axis(0.0_f64.min(lo), hi * 1.05);
            let mut y = lo;
            while y <= hi + step / 2.0 {
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{:.1}" fill="{}">{}</text>"#,
                    LEFT + plot_w + 6.0,
                    sy(y, lo, hi) + 4.0,
                    second.colour,
                    tick(y)
                );
                y += step;
            }
            let _ = writeln!(
                svg,
                r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(90 {0} {1})" fill="{2}">{3} ({4})</text>"#,
                WIDTH - 16.0,
                TOP + plot_h / 2.0,
                second.colour,
                escape(&second.name),
                escape(&second.unit)
            );
            polyline(&mut svg, second, |p| (sx(p.0), sy(p.1, lo, hi)));
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn polyline(svg: &mut String, series: &Series, at: impl Fn(&(f64, f64)) -> (f64, f64)) {
    let points: Vec<String> = series
        .points
        .iter()
        .map(|p| {
            let (x, y) = at(p);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
        series.colour,
        points.join(" ")
    );
}
