//! Every error a user can cause: a one-line message that names the problem, the
//! documented exit status, and nothing stored lost (issue 9, items 5 and 6).

use crate::support::*;
use std::path::Path;
use std::process::{Command, Output};

fn dimple(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dimple")).args(args).output().unwrap()
}

/// Exit status and the single stderr line.
fn failure(out: &Output) -> (i32, String) {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    (out.status.code().unwrap_or(-1), err)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_mistyped_bucket_url_is_refused_instead_of_becoming_a_local_directory() -> TestResult {
    let g = Group::new();
    let db = g.db("a");
    for bad in ["s3:/notes", "s3:notes", "S3://notes", "http://example.com/b", "file:relative/dir", "s3://", "s3://A_B"]
    {
        let out = dimple(&["init", s(&db), "--bucket", bad]);
        let (code, err) = failure(&out);
        assert_eq!(code, 1, "{bad}: {err}");
        assert!(err.contains(&format!("{bad:?}")) && err.contains("s3://bucket/prefix"), "{bad}: {err}");
        assert!(!db.exists() || rusqlite::Connection::open(&db)?.prepare("SELECT 1 FROM ZV_METADATA").is_err());
    }
    // Nothing was created in the working directory under the mistyped name.
    assert!(!Path::new("s3:").exists());
    // A directory whose name really starts like a scheme is still reachable as `./s3:odd`.
    let out = Command::new(env!("CARGO_BIN_EXE_dimple"))
        .current_dir(g.dir.path())
        .args(["init", s(&db), "--bucket", "./s3:odd", "--json"])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bucket = g.reopen("a").bucket()?.unwrap();
    assert_eq!(bucket, format!("file://{}/./s3:odd", g.dir.path().display()).replace("/./", "/"));
    Ok(())
}

#[test]
fn a_file_that_is_not_sqlite_is_a_user_error_with_exit_status_1() -> TestResult {
    let g = Group::new();
    let junk = g.dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(100);
    std::fs::write(&junk, &text)?;
    for args in [
        vec!["init", s(&junk), "--bucket", s(&g.bucket())],
        vec!["track", s(&junk), "t"],
        vec!["status", s(&junk)],
        vec!["sync", s(&junk)],
    ] {
        let (code, err) = failure(&dimple(&args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("not a SQLite database") && err.contains("notes.txt"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&junk)?, text, "the file is untouched");
    Ok(())
}

/// A bucket directory that cannot be written: a one-line explanation and exit 1,
/// and the local changes still waiting to be pushed.
fn unwritable_bucket_is_explained(bucket: &Path, run_as: &[&str]) -> TestResult {
    let g = Group::new();
    let db = g.db("a");
    let cmd = |args: &[&str]| {
        let mut all: Vec<&str> = run_as.to_vec();
        all.push(env!("CARGO_BIN_EXE_dimple"));
        all.extend(args);
        Command::new(all[0]).args(&all[1..]).output().unwrap()
    };
    std::fs::set_permissions(g.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    open_plain(&db).execute_batch("CREATE TABLE t(id TEXT PRIMARY KEY, a)")?;
    std::fs::set_permissions(&db, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    for args in [vec!["init", s(&db), "--bucket", s(bucket)], vec!["track", s(&db), "t"]] {
        let out = cmd(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    open_plain(&db).execute("INSERT INTO t VALUES ('k', 1)", [])?;
    let (code, err) = failure(&cmd(&["push", s(&db)]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot write to the bucket directory"), "{err}");
    let r = g.reopen("a");
    assert!(r.unpushed()? + r.pending_captured()? > 0, "the write waits for the next push");
    Ok(())
}

#[test]
fn a_bucket_directory_without_write_permission_is_explained_with_exit_status_1() -> TestResult {
    let g = Group::new();
    let bucket = g.dir.path().join("readonly-bucket");
    std::fs::create_dir(&bucket)?;
    std::fs::set_permissions(&bucket, std::os::unix::fs::PermissionsExt::from_mode(0o555))?;
    // Root ignores permission bits: run dimple as `nobody` then (setpriv is in
    // util-linux, part of every Debian install).
    let as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
    let root = unsafe { libc::geteuid() } == 0;
    unwritable_bucket_is_explained(&bucket, if root { &as_nobody } else { &[] })
}

#[test]
fn a_bucket_path_under_a_regular_file_is_explained_with_exit_status_1() -> TestResult {
    let g = Group::new();
    let file = g.dir.path().join("plain-file");
    std::fs::write(&file, b"x")?;
    unwritable_bucket_is_explained(&file.join("bucket"), &[])
}
