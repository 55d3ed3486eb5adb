//! `dimple.toml`: what one agent syncs, in one file (docs/agent.md).
//!
//! ```toml
//! # defaults for every database below
//! interval = 30                      # seconds between pulls
//! endpoint = "${DIMPLE_ENDPOINT}"    # ${NAME} is taken from the environment
//! max_requests_per_hour = 2000       # the whole agent
//! metrics_addr = "127.0.0.1:9464"
//!
//! [[database]]
//! path = "notes.db"                  # relative to this file's directory
//! bucket = "s3://team/notes"         # optional: checked against the replica's
//! interval = 10
//! direction = "both"                 # push, pull or both
//! schema = "follow"                  # follow or manual
//! max_requests_per_hour = 600
//! on_change = "notify-send dimple \"$DIMPLE_TABLES\""
//! ```
//!
//! Every problem is reported with the file and line it is on, all of them at once
//! ([`check`]), so one run of `dimple config check` fixes a file.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub interval: Option<Spanned<f64>>,
    pub endpoint: Option<String>,
    pub max_requests_per_hour: Option<Spanned<i64>>,
    pub metrics_addr: Option<Spanned<String>>,
    pub on_change: Option<String>,
    #[serde(default)]
    pub database: Vec<Spanned<Database>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub path: Spanned<String>,
    pub bucket: Option<Spanned<String>>,
    pub interval: Option<Spanned<f64>>,
    pub endpoint: Option<String>,
    pub direction: Option<Spanned<String>>,
    pub schema: Option<Spanned<String>>,
    pub max_requests_per_hour: Option<Spanned<i64>>,
    pub on_change: Option<String>,
}

/// One database as the agent runs it, every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: PathBuf,
    pub interval_secs: Option<f64>,
    pub endpoint: Option<String>,
    pub direction: Option<crate::direction::Direction>,
    pub schema: Option<crate::schema::Policy>,
    pub max_requests_per_hour: Option<u64>,
    pub on_change: Option<String>,
}

/// A checked file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub databases: Vec<Entry>,
    pub max_requests_per_hour: Option<u64>,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// One problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// The default place: `$XDG_CONFIG_HOME/dimple/dimple.toml`, else
/// `~/.config/dimple/dimple.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("dimple").join("dimple.toml"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Replaces `${NAME}` with the environment's value; an unset name is a problem.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<Problem>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        let offset = text.len() - rest.len() + start;
        match env(name) {
            Some(v) if !name.is_empty() => out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\"")),
            _ => problems.push(Problem { line: line_of(text, offset), message: format!("${{{name}}} is not set") }),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses and checks `text` (the file at `path`): every problem, or the config.
/// `is_replica` says whether a path is a dimple replica and, if so, its bucket.
pub fn check(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    is_replica: &dyn Fn(&Path) -> Result<Option<String>, String>,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let expanded = expand(text, env, &mut problems);
    let file: File = match toml::from_str(&expanded) {
        Ok(f) => f,
        Err(e) => {
            let line = e.span().map_or(1, |s| line_of(&expanded, s.start));
            problems.push(Problem { line, message: e.message().trim().to_owned() });
            return Err(problems);
        }
    };
    let at = |span: std::ops::Range<usize>| line_of(&expanded, span.start);
    let positive = |v: &Option<Spanned<f64>>, problems: &mut Vec<Problem>| -> Option<f64> {
        let v = v.as_ref()?;
        if v.get_ref().is_finite() && *v.get_ref() > 0.0 {
            Some(*v.get_ref())
        } else {
            problems.push(Problem {
                line: at(v.span()),
                message: format!("interval must be a positive number of seconds, not {}", v.get_ref()),
            });
            None
        }
    };
    let budget = |v: &Option<Spanned<i64>>, problems: &mut Vec<Problem>| -> Option<u64> {
        let v = v.as_ref()?;
        match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(Problem {
                    line: at(v.span()),
                    message: format!("max_requests_per_hour must be a positive whole number, not {}", v.get_ref()),
                });
                None
            }
        }
    };
    let default_interval = positive(&file.interval, &mut problems);
    let agent_budget = budget(&file.max_requests_per_hour, &mut problems);
    let metrics_addr = file.metrics_addr.as_ref().and_then(|a| match a.get_ref().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(Problem {
                line: at(a.span()),
                message: format!("metrics_addr {:?} is not an address such as 127.0.0.1:9464", a.get_ref()),
            });
            None
        }
    });
    if file.database.is_empty() {
        problems.push(Problem { line: 1, message: "no [[database]] entries: nothing to sync".to_owned() });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut databases = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for d in &file.database {
        let d = d.get_ref();
        let db = dir.join(d.path.get_ref());
        let path_line = at(d.path.span());
        if seen.contains(&db) {
            problems.push(Problem { line: path_line, message: format!("{} is listed twice", db.display()) });
        }
        seen.push(db.clone());
        match is_replica(&db) {
            Ok(bucket) => {
                if let (Some(want), Some(have)) = (&d.bucket, &bucket) {
                    let canon = |u: &str| crate::store::BucketUrl::parse(u).map(|u| u.canonical());
                    let have_canon = canon(have).unwrap_or_else(|_| have.clone());
                    match canon(want.get_ref()) {
                        Ok(w) if w == have_canon => {}
                        Ok(_) => problems.push(Problem {
                            line: at(want.span()),
                            message: format!("{} syncs with {have}, not {}", db.display(), want.get_ref()),
                        }),
                        Err(e) => problems.push(Problem { line: at(want.span()), message: e.to_string() }),
                    }
                }
                if bucket.is_none() && d.bucket.is_none() {
                    problems.push(Problem { line: path_line, message: format!("{} has no bucket", db.display()) });
                }
            }
            Err(why) => problems.push(Problem { line: path_line, message: why }),
        }
        let direction = d.direction.as_ref().and_then(|v| match v.get_ref().as_str() {
            "push" => Some(crate::direction::Direction::Push),
            "pull" => Some(crate::direction::Direction::Pull),
            "both" => Some(crate::direction::Direction::Both),
            other => {
                problems.push(Problem {
                    line: at(v.span()),
                    message: format!("direction {other:?} is not push, pull or both"),
                });
                None
            }
        });
        let schema = d.schema.as_ref().and_then(|v| match v.get_ref().parse::<crate::schema::Policy>() {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(Problem { line: at(v.span()), message: e.to_string() });
                None
            }
        });
        databases.push(Entry {
            path: db,
            interval_secs: positive(&d.interval, &mut problems).or(default_interval),
            endpoint: d.endpoint.clone().or_else(|| file.endpoint.clone()),
            direction,
            schema,
            max_requests_per_hour: budget(&d.max_requests_per_hour, &mut problems),
            on_change: d.on_change.clone().or_else(|| file.on_change.clone()),
        });
    }
    if problems.is_empty() {
        Ok(Config { databases, max_requests_per_hour: agent_budget, metrics_addr })
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET_ENDPOINT").then(|| "http://127.0.0.1:9000".to_owned())
    }

    fn replicas(p: &Path) -> Result<Option<String>, String> {
        if p.ends_with("notes.db") || p.ends_with("other.db") {
            Ok(Some("file:///b".to_owned()))
        } else {
            Err(format!("{}: not a dimple replica", p.display()))
        }
    }

    #[test]
    fn a_good_file_gives_every_database_its_settings_and_the_defaults() {
        let text = "interval = 20\nendpoint = \"${SECRET_ENDPOINT}\"\nmax_requests_per_hour = 100\n\n[[database]]\npath = \"notes.db\"\nbucket = \"file:///b\"\ninterval = 5\ndirection = \"pull\"\n\n[[database]]\npath = \"other.db\"\nschema = \"follow\"\n";
        let c = check(text, Path::new("/etc/dimple/dimple.toml"), &env, &replicas).unwrap();
        assert_eq!(c.max_requests_per_hour, Some(100));
        assert_eq!(c.databases[0].path, Path::new("/etc/dimple/notes.db"));
        assert_eq!(c.databases[0].interval_secs, Some(5.0));
        assert_eq!(c.databases[1].interval_secs, Some(20.0));
        assert_eq!(c.databases[1].endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.databases[0].direction, Some(crate::direction::Direction::Pull));
        assert_eq!(c.databases[1].schema, Some(crate::schema::Policy::Follow));
    }

    #[test]
    fn every_problem_is_reported_on_its_line() {
        let text = "interval = -1\nendpoint = \"${UNSET_THING}\"\n\n[[database]]\npath = \"missing.db\"\n\n[[database]]\npath = \"notes.db\"\nbucket = \"file:///elsewhere\"\ndirection = \"sideways\"\nmax_requests_per_hour = 0\n";
        let problems = check(text, Path::new("dimple.toml"), &env, &replicas).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 2, 5, 9, 10, 11], "{problems:?}");
        assert!(problems[1].message.contains("UNSET_THING"));
        assert!(problems[2].message.contains("not a dimple replica"));
        assert!(problems[3].message.contains("not file:///elsewhere"));
    }

    #[test]
    fn a_syntax_error_or_an_unknown_key_names_its_line() {
        for (text, line) in [("[[database]]\npath = \"notes.db\"\nintervall = 3\n", 3), ("\n\ninterval = = 3\n", 3)] {
            let problems = check(text, Path::new("d.toml"), &env, &replicas).unwrap_err();
            assert_eq!(problems[0].line, line, "{problems:?}");
        }
    }
}
