//! Geofences from GeoJSON: polygons (with holes) and circles (a `Point` with a
//! `radius_m` property), in an R-tree so that thousands of fences stay fast,
//! and the per-key enter / exit / dwell state with border hysteresis.

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, AABB};

const METERS_PER_DEGREE: f64 = 111_320.0;

/// One fence.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The feature's `id`, else its `properties.id`, else `properties.name`.
    pub id: String,
    shape: Shape,
}

#[derive(Debug, Clone)]
enum Shape {
    /// Rings of `[lon, lat]`: the exterior, then holes; each closed.
    Polygon(Vec<Vec<[f64; 2]>>),
    Circle {
        center: [f64; 2],
        radius_m: f64,
    },
}

/// The fences of one GeoJSON file, indexed.
#[derive(Debug)]
pub struct Fences {
    fences: Vec<Fence>,
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, usize>>,
}

impl Fences {
    /// Reads a GeoJSON FeatureCollection (or one Feature). Each feature is a
    /// `Polygon`, `MultiPolygon` (one fence per polygon) or a `Point` with
    /// `properties.radius_m`. `margin_m` widens each fence's box in the index
    /// (the hysteresis distance), so pings just outside still find it.
    pub fn parse(text: &str, margin_m: f64) -> Result<Fences, String> {
        let geo: geojson::GeoJson = text
            .parse()
            .map_err(|e: geojson::Error| format!("not valid GeoJSON: {e}"))?;
        let features = match geo {
            geojson::GeoJson::FeatureCollection(c) => c.features,
            geojson::GeoJson::Feature(f) => vec![f],
            geojson::GeoJson::Geometry(_) => {
                return Err(
                    "GeoJSON must be a FeatureCollection or a Feature, so each fence has an id"
                        .into(),
                )
            }
        };
        let mut fences = Vec::new();
        for (n, feature) in features.iter().enumerate() {
            let prop = |k: &str| {
                feature
                    .property(k)
                    .and_then(|v| v.as_str().map(str::to_string))
            };
            let id = match &feature.id {
                Some(geojson::feature::Id::String(s)) => s.clone(),
                Some(geojson::feature::Id::Number(x)) => x.to_string(),
                None => prop("id").or_else(|| prop("name")).ok_or_else(|| {
                    format!("feature {n} has no id (feature `id`, or properties `id` or `name`)")
                })?,
            };
            let geometry = feature
                .geometry
                .as_ref()
                .ok_or_else(|| format!("fence `{id}` has no geometry"))?;
            match &geometry.value {
                geojson::Value::Polygon(rings) => fences.push(polygon(&id, rings)?),
                geojson::Value::MultiPolygon(polys) => {
                    for rings in polys {
                        fences.push(polygon(&id, rings)?);
                    }
                }
                geojson::Value::Point(p) => {
                    let radius_m = feature
                        .property("radius_m")
                        .and_then(serde_json::Value::as_f64)
                        .filter(|r| *r > 0.0)
                        .ok_or_else(|| {
                            format!("circle fence `{id}` needs a positive `radius_m` property")
                        })?;
                    fences.push(Fence {
                        id,
                        shape: Shape::Circle {
                            center: [p[0], p[1]],
                            radius_m,
                        },
                    });
                }
                other => {
                    return Err(format!(
                    "fence `{id}` is a {}; fences are Polygon, MultiPolygon or Point with radius_m",
                    other.type_name()
                ))
                }
            }
        }
        if fences.is_empty() {
            return Err("the file has no fences".into());
        }
        let boxes = fences
            .iter()
            .enumerate()
            .map(|(i, f)| GeomWithData::new(f.bounds(margin_m), i))
            .collect();
        Ok(Fences {
            fences,
            tree: RTree::bulk_load(boxes),
        })
    }

    /// Fences whose widened box holds the point.
    pub fn near(&self, lon: f64, lat: f64) -> impl Iterator<Item = usize> + '_ {
        self.tree.locate_all_at_point(&[lon, lat]).map(|g| g.data)
    }

    /// The fence at `i`.
    pub fn get(&self, i: usize) -> &Fence {
        &self.fences[i]
    }

    /// How many fences.
    pub fn len(&self) -> usize {
        self.fences.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }
}

fn polygon(id: &str, rings: &[Vec<Vec<f64>>]) -> Result<Fence, String> {
    let mut out = Vec::new();
    for ring in rings {
        if ring.len() < 4 {
            return Err(format!(
                "fence `{id}`: a polygon ring needs at least 4 positions"
            ));
        }
        if ring.first() != ring.last() {
            return Err(format!(
                "fence `{id}`: polygon is not closed (the last position must repeat the first)"
            ));
        }
        out.push(ring.iter().map(|p| [p[0], p[1]]).collect());
    }
    if out.is_empty() {
        return Err(format!("fence `{id}`: polygon has no rings"));
    }
    Ok(Fence {
        id: id.to_string(),
        shape: Shape::Polygon(out),
    })
}

impl Fence {
    fn bounds(&self, margin_m: f64) -> Rectangle<[f64; 2]> {
        let (mut lo, mut hi) = ([f64::MAX, f64::MAX], [f64::MIN, f64::MIN]);
        let mut grow = |p: [f64; 2], r_m: f64| {
            let dlat = r_m / METERS_PER_DEGREE;
            let dlon = r_m / (METERS_PER_DEGREE * p[1].to_radians().cos().max(0.01));
            lo = [lo[0].min(p[0] - dlon), lo[1].min(p[1] - dlat)];
            hi = [hi[0].max(p[0] + dlon), hi[1].max(p[1] + dlat)];
        };
        match &self.shape {
            Shape::Polygon(rings) => {
                for p in &rings[0] {
                    grow(*p, margin_m);
                }
            }
            Shape::Circle { center, radius_m } => grow(*center, radius_m + margin_m),
        }
        Rectangle::from_aabb(AABB::from_corners(lo, hi))
    }

    /// Meters from the border: positive inside, negative outside.
    pub fn depth_m(&self, lon: f64, lat: f64) -> f64 {
        match &self.shape {
            Shape::Circle { center, radius_m } => radius_m - haversine_m([lon, lat], *center),
            Shape::Polygon(rings) => {
                let inside = contains(&rings[0], lon, lat)
                    && !rings[1..].iter().any(|hole| contains(hole, lon, lat));
                let edge = rings
                    .iter()
                    .flat_map(|r| r.windows(2))
                    .map(|s| segment_m([lon, lat], s[0], s[1]))
                    .fold(f64::MAX, f64::min);
                if inside {
                    edge
                } else {
                    -edge
                }
            }
        }
    }
}

/// Ray casting on lon/lat.
fn contains(ring: &[[f64; 2]], lon: f64, lat: f64) -> bool {
    let mut inside = false;
    for s in ring.windows(2) {
        let ([x1, y1], [x2, y2]) = (s[0], s[1]);
        if (y1 > lat) != (y2 > lat) && lon < (x2 - x1) * (lat - y1) / (y2 - y1) + x1 {
            inside = !inside;
        }
    }
    inside
}

/// Meters from `p` to the segment `a`–`b`, in a local flat projection (exact
/// enough at fence scale).
fn segment_m(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let k = METERS_PER_DEGREE * p[1].to_radians().cos();
    let xy = |q: [f64; 2]| ((q[0] - p[0]) * k, (q[1] - p[1]) * METERS_PER_DEGREE);
    let ((ax, ay), (bx, by)) = (xy(a), xy(b));
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
    };
    let (cx, cy) = (ax + t * dx, ay + t * dy);
    (cx * cx + cy * cy).sqrt()
}

/// Great-circle distance in meters.
pub fn haversine_m(a: [f64; 2], b: [f64; 2]) -> f64 {
    let (la1, la2) = (a[1].to_radians(), b[1].to_radians());
    let dla = la2 - la1;
    let dlo = (b[0] - a[0]).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().asin()
}

/// A FeatureCollection of `side × side` square fences (`f0`, `f1`, …), each
/// 0.005° wide on a 0.01° grid from (0, 0): for benches and tests at scale.
pub fn grid_geojson(side: usize) -> String {
    let mut features = Vec::with_capacity(side * side);
    for i in 0..side * side {
        let (x, y) = ((i % side) as f64 * 0.01, (i / side) as f64 * 0.01);
        features.push(format!(
            r#"{{"type":"Feature","id":"f{i}","properties":{{}},"geometry":{{"type":"Polygon","coordinates":[[[{x},{y}],[{x1},{y}],[{x1},{y1}],[{x},{y1}],[{x},{y}]]]}}}}"#,
            x1 = x + 0.005,
            y1 = y + 0.005
        ));
    }
    format!(
        r#"{{"type":"FeatureCollection","features":[{}]}}"#,
        features.join(",")
    )
}

/// What a ping did to a key's presence in one fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crossing {
    Enter(String),
    Exit(String),
    Dwell(String),
}

/// Where one key is: the fences it is inside, since when, and whether its
/// dwell already fired for this visit.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    pub inside: Vec<(usize, i64, bool)>,
}

/// Border handling of a geofence pattern.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Pings less accurate than this (meters) are ignored.
    pub max_accuracy_m: f64,
    /// Leaving needs a ping this far outside (meters), so border jitter does not flap.
    pub hysteresis_m: f64,
    /// Dwell after this long inside (ms), if dwell is watched.
    pub dwell_ms: Option<i64>,
}

impl Presence {
    /// Applies one ping; returns what it crossed.
    pub fn ping(
        &mut self,
        fences: &Fences,
        tolerance: &Tolerance,
        lon: f64,
        lat: f64,
        accuracy_m: Option<f64>,
        at_ms: i64,
    ) -> Vec<Crossing> {
        if accuracy_m.is_some_and(|a| a > tolerance.max_accuracy_m) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let near: Vec<usize> = fences.near(lon, lat).collect();
        // Leaving: far enough outside, or not near at all any more.
        self.inside.retain(|(i, _, _)| {
            let stays =
                near.contains(i) && fences.get(*i).depth_m(lon, lat) >= -tolerance.hysteresis_m;
            if !stays {
                out.push(Crossing::Exit(fences.get(*i).id.clone()));
            }
            stays
        });
        for i in near {
            let depth = fences.get(i).depth_m(lon, lat);
            if depth >= 0.0 && !self.inside.iter().any(|(f, _, _)| *f == i) {
                self.inside.push((i, at_ms, false));
                out.push(Crossing::Enter(fences.get(i).id.clone()));
            }
        }
        if let Some(dwell) = tolerance.dwell_ms {
            out.extend(self.dwelled(fences, dwell, at_ms));
        }
        out
    }

    /// Dwell for every fence entered at least `dwell_ms` before `now_ms`, once per visit.
    pub fn dwelled(&mut self, fences: &Fences, dwell_ms: i64, now_ms: i64) -> Vec<Crossing> {
        let mut out = Vec::new();
        for (i, since, fired) in &mut self.inside {
            if !*fired && now_ms - *since >= dwell_ms {
                *fired = true;
                out.push(Crossing::Dwell(fences.get(*i).id.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A 200 m square around (0.001, 0.001) near the equator, and a circle.
    const FENCES: &str = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","id":"mall","properties":{},
       "geometry":{"type":"Polygon","coordinates":[[[0,0],[0.0018,0],[0.0018,0.0018],[0,0.0018],[0,0]]]}},
      {"type":"Feature","properties":{"name":"store-42","radius_m":50},
       "geometry":{"type":"Point","coordinates":[0.01,0.01]}}]}"#;

    fn tolerance() -> Tolerance {
        Tolerance {
            max_accuracy_m: 100.0,
            hysteresis_m: 25.0,
            dwell_ms: Some(600_000),
        }
    }

    #[test]
    fn depth_is_signed_meters_from_the_border() {
        let f = Fences::parse(FENCES, 25.0).unwrap();
        assert_eq!(f.len(), 2);
        let mall = f.get(0);
        assert!(
            (mall.depth_m(0.0009, 0.0009) - 100.2).abs() < 1.0,
            "center of a 200 m square"
        );
        assert!(mall.depth_m(-0.0001, 0.0009) < -10.0);
        let store = f.get(1);
        assert_eq!(store.id, "store-42");
        assert!((store.depth_m(0.01, 0.01) - 50.0).abs() < 0.01);
    }

    #[test]
    fn border_jitter_enters_once_and_leaves_once() {
        let f = Fences::parse(FENCES, 25.0).unwrap();
        let t = tolerance();
        let mut p = Presence::default();
        // Just inside, just outside (5 m), inside, outside (5 m): one enter, no exit.
        let deg = 1.0 / METERS_PER_DEGREE;
        let mut crossings = Vec::new();
        for (i, lon) in [5.0 * deg, -5.0 * deg, 5.0 * deg, -5.0 * deg]
            .iter()
            .enumerate()
        {
            crossings.extend(p.ping(&f, &t, *lon, 0.0009, Some(10.0), i as i64 * 1000));
        }
        assert_eq!(crossings, vec![Crossing::Enter("mall".into())]);
        // Clearly outside (40 m): exit.
        let out = p.ping(&f, &t, -40.0 * deg, 0.0009, Some(10.0), 5000);
        assert_eq!(out, vec![Crossing::Exit("mall".into())]);
        // An inaccurate ping deep inside changes nothing.
        assert!(p.ping(&f, &t, 0.0009, 0.0009, Some(500.0), 6000).is_empty());
        assert!(p.inside.is_empty());
    }

    #[test]
    fn dwell_fires_once_per_visit() {
        let f = Fences::parse(FENCES, 25.0).unwrap();
        let t = tolerance();
        let mut p = Presence::default();
        p.ping(&f, &t, 0.0009, 0.0009, None, 0);
        assert!(p.ping(&f, &t, 0.0009, 0.0009, None, 599_999).is_empty());
        assert_eq!(
            p.ping(&f, &t, 0.0009, 0.0009, None, 600_000),
            vec![Crossing::Dwell("mall".into())]
        );
        assert!(p.ping(&f, &t, 0.0009, 0.0009, None, 900_000).is_empty());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(Fences::parse("{", 0.0)
            .unwrap_err()
            .starts_with("not valid GeoJSON"));
        let open = r#"{"type":"Feature","id":"x","properties":{},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}}"#;
        assert!(Fences::parse(open, 0.0).unwrap_err().contains("not closed"));
        let circle = r#"{"type":"Feature","id":"c","properties":{},"geometry":{"type":"Point","coordinates":[0,0]}}"#;
        assert!(Fences::parse(circle, 0.0).unwrap_err().contains("radius_m"));
    }

    #[test]
    fn ten_thousand_fences_find_the_one_a_ping_is_in() {
        let text = grid_geojson(100);
        let f = Fences::parse(&text, 25.0).unwrap();
        let mut p = Presence::default();
        let hits = p.ping(&f, &tolerance(), 0.3725, 0.4525, None, 0);
        assert_eq!(hits, vec![Crossing::Enter("f4537".into())]);
    }
}
