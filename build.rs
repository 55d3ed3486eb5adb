//! Names the commit in `dimple --version` (`DIMPLE_COMMIT`): the short hash of
//! HEAD, or "unknown" outside a git checkout (a crates.io build, a tarball).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DIMPLE_COMMIT={commit}");
    // A commit or a checkout moves HEAD or the ref it points at.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
