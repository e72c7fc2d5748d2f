//! Scraping River's metrics listener, and a strict checker of the Prometheus
//! text format (version 0.0.4) that parses what it checks, so tests can read
//! values back. `promtool check metrics` runs too when it is on the PATH.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: families (name -> type) and samples in order.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of every sample named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The one sample named `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Every sample of counter and histogram families (which may never
    /// decrease), keyed by name and labels.
    pub fn monotonic(&self) -> HashMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| {
                let family = family_of(&s.name, &self.types);
                matches!(
                    self.types.get(family).map(String::as_str),
                    Some("counter" | "histogram")
                )
            })
            .map(|s| (format!("{}{:?}", s.name, s.labels), s.value))
            .collect()
    }
}

/// The family a sample belongs to (histograms: without the suffix).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base;
            }
        }
    }
    name
}

/// GET /metrics over a Unix socket (a path) or TCP (`host:port`). Returns
/// (status, content type, body).
pub fn get(address: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: river\r\naccept: */*\r\n\r\n");
    let mut answer = Vec::new();
    if address.starts_with('/') {
        let mut stream = std::os::unix::net::UnixStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut answer)?;
    } else {
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        stream.read_to_end(&mut answer)?;
    }
    let text = String::from_utf8(answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, content_type, body.to_owned()))
}

/// Scrape `address`, check the format strictly (and with promtool when
/// installed), and parse it. Panics with the text on any violation.
pub fn scrape(address: &str) -> Exposition {
    let (status, content_type, body) =
        get(address, "/metrics").unwrap_or_else(|e| panic!("scrape {address}: {e}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4");
    match check(&body) {
        Ok(exposition) => exposition,
        Err(err) => panic!("invalid exposition: {err}\n{body}"),
    }
}

/// `promtool check metrics` on `text`, if promtool is on the PATH: Some(output)
/// when it complained.
pub fn promtool(text: &str) -> Option<String> {
    let promtool = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("promtool"))
        .find(|p| p.exists())?;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let output = child.wait_with_output().ok()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.status.success() || !said.trim().is_empty()).then_some(said)
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Parse `{a="x",b="y"}` at the start of `rest`; returns labels and the rest.
fn parse_labels(rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = rest.strip_prefix('{') else {
        return Ok((labels, rest));
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// Check `text` against the 0.0.4 text format and Prometheus' rules for
/// counters and histograms, and parse it.
pub fn check(text: &str) -> Result<Exposition, String> {
    if let Some(complaint) = promtool(text) {
        return Err(format!("promtool: {complaint}"));
    }
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut out = Exposition::default();
    let mut helps = HashSet::new();
    let mut finished_families: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["HELP", name, _] | ["HELP", name]
                    if !valid_metric_name(name) || !helps.insert(name.to_string()) =>
                {
                    return Err(at("bad or repeated HELP".into()));
                }
                ["TYPE", name, kind] => {
                    if !valid_metric_name(name) {
                        return Err(at("bad TYPE name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(at(format!("unknown type {kind}")));
                    }
                    if out
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(at("TYPE twice".into()));
                    }
                    if out
                        .samples
                        .iter()
                        .any(|s| family_of(&s.name, &out.types) == *name)
                    {
                        return Err(at("TYPE after its samples".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(at)?;
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| at("bad value".into()))?;
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &out.types).to_owned();
        match out.types.get(&family).map(String::as_str) {
            Some("counter") if value < 0.0 || value.is_nan() => {
                return Err(at("negative counter".into()))
            }
            Some("counter" | "gauge") if name != family => {
                return Err(at("sample name differs from its family".into()))
            }
            Some("histogram") if name == family => {
                return Err(at("histogram sample without _bucket/_sum/_count".into()))
            }
            Some("histogram") if name.ends_with("_bucket") && !labels.contains_key("le") => {
                return Err(at("bucket without le".into()))
            }
            _ => {}
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished_families.contains(&family) {
                return Err(at("family's samples are not together".into()));
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished_families.insert(previous);
            }
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Buckets ascend, are cumulative, end in +Inf equal to _count; _sum exists.
fn check_histograms(out: &Exposition) -> Result<(), String> {
    for (family, _) in out.types.iter().filter(|(_, t)| *t == "histogram") {
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in out
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut labels = sample.labels.clone();
            let le = labels.remove("le").unwrap_or_default();
            let bound = parse_value(&le).ok_or(format!("{family}: bad le {le}"))?;
            by_series
                .entry(format!("{labels:?}"))
                .or_default()
                .push((bound, sample.value));
        }
        for (labels, buckets) in by_series {
            for pair in buckets.windows(2) {
                if pair[1].0 <= pair[0].0 || pair[1].1 < pair[0].1 {
                    return Err(format!(
                        "{family}{labels}: buckets not ascending/cumulative"
                    ));
                }
            }
            let (last_bound, last_count) = *buckets.last().ok_or("no bucket")?;
            if last_bound != f64::INFINITY {
                return Err(format!("{family}{labels}: no +Inf bucket"));
            }
            let count = out
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .ok_or(format!("{family}{labels}: no _count"))?;
            if count.value != last_count {
                return Err(format!("{family}{labels}: +Inf bucket != _count"));
            }
            if !out
                .samples
                .iter()
                .any(|s| s.name == format!("{family}_sum") && format!("{:?}", s.labels) == labels)
            {
                return Err(format!("{family}{labels}: no _sum"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_refuses_what_prometheus_refuses() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
        let parsed = check(good).unwrap();
        assert_eq!(parsed.get("a_total", &[("x", "1\"")]), Some(3.0));
        for bad in [
            "a_total 1",                                              // no final newline
            "# TYPE a counter\na -1\n",                               // negative counter
            "a{x=\"1\"} 1\na{x=\"1\"} 2\n",                           // duplicate
            "a{x=1} 1\n",                                             // unquoted
            "a{x=\"\\q\"} 1\n",                                       // bad escape
            "1a 1\n",                                                 // bad name
            "a x\n",                                                  // bad value
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n", // no +Inf
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "a 1\nb 1\na{x=\"2\"} 1\n", // not together
            "a 1\n# TYPE a gauge\n",    // TYPE after samples
        ] {
            assert!(check(bad).is_err(), "accepted {bad:?}");
        }
    }
}
