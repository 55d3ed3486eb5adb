//! Running dimple on many laptops (docs/agent.md): one config file for an agent,
//! metrics over HTTP, `--on-change`, a request budget, `config check`, `doctor`,
//! and the tool's own completions, manual page and version.

use super::harness::*;
use anyhow::Result;
use dimple::agent::{self, Config};
use dimple::store::{LocalStore, Metered, Store};
use dimple::Replica;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn dimple(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dimple")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics` over plain HTTP, as Prometheus does.
fn scrape(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "{out}");
    Ok(out)
}

/// The value of the sample `name{labels}` in a scrape (0 when absent).
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn pull(db: &Path) -> Result<dimple::PullReport> {
    let mut r = Replica::open(db, Default::default())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = r.bucket()?.unwrap();
    Ok(rt.block_on(async { dimple::pull(&mut r, &dimple::open_store(&url, None).await?).await })?)
}

fn push(db: &Path) -> Result<()> {
    let mut r = Replica::open(db, Default::default())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = r.bucket()?.unwrap();
    rt.block_on(async { dimple::push(&mut r, &dimple::open_store(&url, None).await?).await })?;
    Ok(())
}

#[test]
fn one_config_file_drives_two_databases_in_two_buckets_with_metrics_and_change_hooks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (b1, b2) = (d.join("bucket1").display().to_string(), d.join("bucket2").display().to_string());
    let (a1, a2) = (replica(d, "a1", &b1)?, replica(d, "a2", &b1)?);
    let (c1, c2) = (replica(d, "c1", &b2)?, replica(d, "c2", &b2)?);
    let port = free_port();
    let hook = d.join("changed.txt");
    std::fs::write(
        d.join("dimple.toml"),
        format!(
            "interval = 1\nmetrics_addr = \"127.0.0.1:{port}\"\non_change = \"echo \\\"$DIMPLE_DB $DIMPLE_TABLES $DIMPLE_CHANGES\\\" >> {}\"\n\n[[database]]\npath = \"a1.db\"\nbucket = \"{b1}\"\n\n[[database]]\npath = \"c1.db\"\ninterval = 2\n",
            hook.display()
        ),
    )?;
    let (code, out, err) = dimple(&["config", "check", d.join("dimple.toml").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok, 2 databases"), "{out}");
    let log = d.join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dimple"))
        .args(["agent", "--config", d.join("dimple.toml").to_str().unwrap()])
        .env("RUST_LOG", "dimple=debug")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let res = (|| -> Result<()> {
        wait_for(Duration::from_secs(30), "the metrics endpoint", || Ok(scrape(port).is_ok()))?;
        let before = scrape(port)?;
        let pushed =
            |text: &str, db: &str| sample(text, &format!("dimple_changes_total{{db=\"{db}\",direction=\"pushed\"}}"));
        let a1_name = a1.display().to_string();
        assert_eq!(pushed(&before, &a1_name), 0.0);
        // Writes in both databases reach the other replica of each bucket.
        insert(&a1, "from-a1", "x")?;
        insert(&c1, "from-c1", "y")?;
        wait_for(Duration::from_secs(30), "both writes to be pushed", || {
            Ok(pull(&a2)?.changes + pull(&c2)?.changes > 0
                && count(&a2, "SELECT count(*) FROM notes WHERE id = 'from-a1'")? == 1
                && count(&c2, "SELECT count(*) FROM notes WHERE id = 'from-c1'")? == 1)
        })?;
        wait_for(Duration::from_secs(10), "the metrics to count the push", || {
            Ok(pushed(&scrape(port)?, &a1_name) >= 2.0)
        })?;
        let after = scrape(port)?;
        assert!(sample(&after, &format!("dimple_requests_total{{db=\"{a1_name}\",kind=\"put\"}}")) >= 2.0, "{after}");
        assert!(after.contains(&format!("dimple_seconds_since_last_pull{{db=\"{a1_name}\"}}")), "{after}");
        assert!(after.contains("# TYPE dimple_sync_duration_seconds histogram"), "{after}");
        // A remote write applied by the agent runs the hook with the tables touched.
        insert(&a2, "from-a2", "z")?;
        push(&a2)?;
        wait_for(Duration::from_secs(30), "the on-change hook", || {
            Ok(std::fs::read_to_string(&hook).unwrap_or_default().contains(&format!("{} notes", a1.display())))
        })?;
        assert_eq!(count(&a1, "SELECT count(*) FROM notes WHERE id = 'from-a2'")?, 1);
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    res.map_err(|e| e.context(std::fs::read_to_string(&log).unwrap_or_default()))
}

#[test]
fn config_check_reports_each_problem_with_its_file_and_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    replica(d, "ok", &d.join("b").display().to_string())?;
    let file = d.join("bad.toml");
    std::fs::write(
        &file,
        "interval = 0\nendpoint = \"${DIMPLE_SURELY_UNSET_VAR}\"\n\n[[database]]\npath = \"ok.db\"\ndirection = \"sideways\"\n\n[[database]]\npath = \"missing.db\"\n",
    )?;
    let (code, out, err) = dimple(&["config", "check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let f = file.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "four problems and the summary: {err}");
    for (i, (line, what)) in
        [(1, "interval"), (2, "DIMPLE_SURELY_UNSET_VAR"), (6, "sideways"), (9, "no such database")].iter().enumerate()
    {
        assert!(lines[i].starts_with(&format!("{f}:{line}: ")) && lines[i].contains(what), "{}", lines[i]);
    }
    Ok(())
}

/// A simulated day on paused time: an agent syncing every second with a budget of
/// 60 requests an hour stays within it (plus the hour's worth it starts with).
#[test]
fn a_request_budget_holds_over_a_simulated_day() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let bucket = d.join("bucket");
    let db = replica(d, "a", &bucket.display().to_string())?;
    let other = replica(d, "b", &bucket.display().to_string())?;
    insert(&other, "seed", "x")?;
    push(&other)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()?;
    let store: Metered<dyn Store> = Metered::new(Box::new(LocalStore::open(&bucket)?));
    let mut r = Replica::open(&db, Default::default())?;
    let lock = agent::lock(&db)?;
    let cfg = Config {
        interval: Duration::from_secs(1),
        poll: Duration::from_secs(1),
        max_requests_per_hour: Some(60),
        ..Default::default()
    };
    let day = Duration::from_secs(86_400);
    rt.block_on(async { agent::run(&mut r, &store, lock, cfg, tokio::time::sleep(day)).await })?;
    let used = store.stats().total;
    assert!(used <= 60 * 25, "{used} requests in a day with a budget of 60 an hour");
    assert!(used >= 60 * 20, "{used}: the budget is used, not starved");
    assert_eq!(count(&db, "SELECT count(*) FROM notes WHERE id = 'seed'")?, 1);
    let st = dimple::agent::state::read(&db).unwrap();
    assert_eq!(st.max_requests_per_hour, Some(60));
    assert!(st.pull_interval_secs.unwrap_or(0.0) > 1.0, "status says the interval was stretched: {st:?}");
    Ok(())
}

#[test]
fn doctor_passes_on_the_s3_test_server() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let Some(store) = rt.block_on(crate::store_contract::s3_support::fresh_store("doctor"))? else { return Ok(()) };
    let endpoint = crate::store_contract::s3_support::endpoint()?.unwrap();
    let url = store.describe().split(" at ").next().unwrap_or_default().trim_end_matches('/').to_owned();
    let (code, out, err) = dimple(&["doctor", &url, "--endpoint", &endpoint]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 7, "{out}");
    assert!(out.contains("pass  multipart upload"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("pass  clock skew: ") && l.ends_with(" ms")), "measured: {out}");
    let left = rt.block_on(dimple::store::list_all(&store, "doctor-", None))?;
    assert!(left.is_empty(), "the scratch prefix is removed: {left:?}");
    Ok(())
}

#[test]
fn doctor_exits_non_zero_where_dimple_cannot_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x")?;
    let (code, out, err) = dimple(&["doctor", file.join("bucket").to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    Ok(())
}

#[test]
fn completions_a_manual_page_and_a_version_that_names_the_commit() -> Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, _) = dimple(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(out.contains("agent") && out.contains("rekey"), "{shell} completes the subcommands");
    }
    let (code, man, _) = dimple(&["man"]);
    assert_eq!(code, 0);
    assert!(man.starts_with(".ie") || man.contains(".TH dimple 1"), "{}", &man[..man.len().min(200)]);
    let (_, version, _) = dimple(&["--version"]);
    let named = version.split("(commit ").nth(1).and_then(|r| r.split(')').next()).unwrap_or_default().to_owned();
    let in_git = Command::new("git").args(["rev-parse", "--git-dir"]).output().is_ok_and(|o| o.status.success());
    if in_git {
        // The commit it was built from (HEAD may have moved since the build).
        let known =
            Command::new("git").args(["rev-parse", "--verify", "--quiet", &format!("{named}^{{commit}}")]).output()?;
        assert!(named.len() == 12 && known.status.success(), "{version} names a commit of this repository");
    } else {
        assert_eq!(named, "unknown", "{version}");
    }
    Ok(())
}
