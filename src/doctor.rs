//! `dimple doctor URL`: whether a bucket does what dimple relies on, checked
//! against the real endpoint in a scratch prefix that is removed afterwards.
//!
//! Each check says what it found and, where the server falls short, what dimple
//! does about it (its fallback) or why it cannot run there safely. A server that
//! answers a failed create-only PUT with 304 instead of 412 (one MinIO release) is
//! recognised and read as 412; a server that ignores the preconditions is not safe:
//! two devices claiming one replica id would go unnoticed.

use crate::store::{list_all, Got, PutMode, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    /// Works, through a fallback, or with a caveat.
    Warn,
    /// dimple cannot run safely here.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check { name, outcome, detail: detail.into() }
    }
}

/// Runs every check under a fresh scratch prefix of `store`, then removes it.
/// `skew_ms` is the server's clock minus this machine's, when it could be measured.
pub async fn run(store: &dyn Store, skew_ms: Option<i64>) -> Vec<Check> {
    let prefix = format!("doctor-{:016x}/", rand::random::<u64>());
    let mut checks = Vec::new();
    let basics = basics(store, &prefix).await;
    let usable = basics.outcome != Outcome::Fail;
    checks.push(basics);
    if usable {
        checks.push(listing(store, &prefix).await);
        checks.push(create_only(store, &prefix).await);
        checks.push(if_match(store, &prefix).await);
        checks.push(etags(store, &prefix).await);
        checks.push(multipart(store, &prefix).await);
    }
    checks.push(match skew_ms {
        None => Check::new("clock skew", Outcome::Pass, "not measured for this store (a local directory uses this machine's clock)"),
        Some(ms) if ms.abs() <= 60_000 => Check::new("clock skew", Outcome::Pass, format!("{} ms", ms)),
        Some(ms) if ms.abs() < crate::clock::DEFAULT_MAX_DRIFT_MS as i64 => Check::new(
            "clock skew",
            Outcome::Warn,
            format!("{:.0} s between this machine and the server: fix the clock (NTP); last-writer-wins ties follow the clocks of the devices", ms as f64 / 1000.0),
        ),
        Some(ms) => Check::new(
            "clock skew",
            Outcome::Fail,
            format!("{:.0} h: other replicas refuse ids further than a day in the future; fix this machine's clock", ms as f64 / 3_600_000.0),
        ),
    });
    // Clean up whatever got written, even after failures.
    if let Ok(left) = list_all(store, &prefix, None).await {
        for m in left {
            let _ = store.delete(&m.key).await;
        }
    }
    checks
}

async fn basics(store: &dyn Store, prefix: &str) -> Check {
    let name = "credentials and permissions";
    let key = format!("{prefix}basic");
    let body = b"dimple doctor".to_vec();
    let steps = async {
        store.put(&key, body.clone(), PutMode::Overwrite).await.map_err(|e| format!("write: {e}"))?;
        match store.get(&key, None).await.map_err(|e| format!("read: {e}"))? {
            Got::Found { bytes, .. } if bytes == body => {}
            _ => return Err("read: the object came back different".to_owned()),
        }
        let listed = list_all(store, prefix, None).await.map_err(|e| format!("list: {e}"))?;
        if !listed.iter().any(|m| m.key == key) {
            return Err("list: a written object is not listed".to_owned());
        }
        store.delete(&key).await.map_err(|e| format!("delete: {e}"))?;
        match store.get(&key, None).await {
            Err(StoreError::NotFound(_)) => Ok(()),
            Ok(_) => Err("delete: the object is still there".to_owned()),
            Err(e) => Err(format!("read after delete: {e}")),
        }
    };
    match steps.await {
        Ok(()) => Check::new(name, Outcome::Pass, "write, read, list and delete work"),
        Err(e) => Check::new(name, Outcome::Fail, e),
    }
}

/// Large values (docs/attachments.md) of 16 MiB or more are uploaded in parts.
async fn multipart(store: &dyn Store, prefix: &str) -> Check {
    let name = "multipart upload";
    let key = format!("{prefix}multipart");
    let body = b"dimple doctor, in one part".to_vec();
    let steps = async {
        let upload = store.multipart_start(&key).await.map_err(|e| format!("start: {e}"))?;
        let etag =
            store.multipart_put(&key, &upload, 1, body.clone().into()).await.map_err(|e| format!("part: {e}"))?;
        let parts = store.multipart_parts(&key, &upload).await.map_err(|e| format!("list parts: {e}"))?;
        if !parts.iter().any(|p| p.number == 1 && p.size == body.len() as u64) {
            let _ = store.multipart_abort(&key, &upload).await;
            return Err("list parts: a stored part is not listed, so a cut upload would start over".to_owned());
        }
        let part = crate::store::Part { number: 1, size: body.len() as u64, etag };
        store.multipart_finish(&key, &upload, &[part]).await.map_err(|e| format!("finish: {e}"))?;
        match store.get(&key, None).await.map_err(|e| format!("read: {e}"))? {
            Got::Found { bytes, .. } if bytes == body => Ok(()),
            _ => Err("read: the joined object came back different".to_owned()),
        }
    };
    match steps.await {
        Ok(()) => Check::new(name, Outcome::Pass, "start, part, list parts and finish work"),
        Err(e) => Check::new(
            name,
            Outcome::Warn,
            format!("{e}: values of 16 MiB or more (attachments) cannot be pushed to this server"),
        ),
    }
}

async fn listing(store: &dyn Store, prefix: &str) -> Check {
    let name = "list order and paging";
    let names = ["c", "a", "e", "b", "d"];
    for n in names {
        if let Err(e) = store.put(&format!("{prefix}list/{n}"), vec![1], PutMode::Overwrite).await {
            return Check::new(name, Outcome::Fail, format!("write: {e}"));
        }
    }
    let list_prefix = format!("{prefix}list/");
    let all = match list_all(store, &list_prefix, None).await {
        Ok(v) => v.into_iter().map(|m| m.key).collect::<Vec<_>>(),
        Err(e) => return Check::new(name, Outcome::Fail, format!("list: {e}")),
    };
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != names.len() || all.len() != names.len() {
        return Check::new(name, Outcome::Fail, format!("listed {} keys for {} written", all.len(), names.len()));
    }
    let after = format!("{list_prefix}b");
    let rest = match store.list_page(&list_prefix, Some(&after)).await {
        Ok((page, _)) => page.into_iter().map(|m| m.key).collect::<Vec<_>>(),
        Err(e) => return Check::new(name, Outcome::Fail, format!("list after a key: {e}")),
    };
    if rest.iter().any(|k| *k <= after) {
        return Check::new(
            name,
            Outcome::Fail,
            "a page asked to start after a key starts before it: paging would loop or repeat",
        );
    }
    if all != sorted {
        return Check::new(
            name,
            Outcome::Warn,
            "keys are not listed in byte order; dimple reads every page and needs no order",
        );
    }
    Check::new(name, Outcome::Pass, "keys in byte order; pages continue after the key asked for")
}

async fn create_only(store: &dyn Store, prefix: &str) -> Check {
    let name = "create-only PUT (If-None-Match)";
    let key = format!("{prefix}create");
    if let Err(e) = store.put(&key, b"first".to_vec(), PutMode::Create).await {
        return Check::new(name, Outcome::Fail, format!("creating a new key failed: {e}"));
    }
    match store.put(&key, b"second".to_vec(), PutMode::Create).await {
        Err(StoreError::PreconditionFailed(m)) if m.contains("HTTP 304") => Check::new(
            name,
            Outcome::Warn,
            "answers 304 instead of 412 on an existing key (a known MinIO bug); fallback: dimple reads 304 on a conditional PUT as 412",
        ),
        Err(StoreError::PreconditionFailed(_)) => Check::new(name, Outcome::Pass, "an existing key is refused (412)"),
        Ok(_) => Check::new(
            name,
            Outcome::Fail,
            "an existing key was overwritten: the server ignores If-None-Match, so two devices using one replica id would overwrite each other unnoticed",
        ),
        Err(e) => Check::new(name, Outcome::Fail, format!("unexpected answer: {e}")),
    }
}

async fn if_match(store: &dyn Store, prefix: &str) -> Check {
    let name = "PUT with If-Match";
    let key = format!("{prefix}update");
    let first = match store.put(&key, b"v1".to_vec(), PutMode::Overwrite).await {
        Ok(etag) => etag,
        Err(e) => return Check::new(name, Outcome::Fail, format!("write: {e}")),
    };
    let second = match store.put(&key, b"v2".to_vec(), PutMode::Update(first.clone())).await {
        Ok(etag) => etag,
        Err(e) => return Check::new(name, Outcome::Fail, format!("a PUT with the current ETag failed: {e}")),
    };
    match store.put(&key, b"v3".to_vec(), PutMode::Update(first)).await {
        Err(StoreError::PreconditionFailed(_)) => {}
        Ok(_) => {
            return Check::new(
                name,
                Outcome::Fail,
                "a PUT with a stale ETag overwrote the object: the server ignores If-Match, so a copied replica would overwrite its twin's head",
            )
        }
        Err(e) => return Check::new(name, Outcome::Fail, format!("unexpected answer: {e}")),
    }
    match store.get(&key, None).await {
        Ok(Got::Found { bytes, .. }) if bytes == b"v2" => Check::new(
            name,
            Outcome::Pass,
            format!("the current ETag ({second}) updates, a stale one is refused (412)"),
        ),
        _ => Check::new(name, Outcome::Fail, "the object does not hold the last accepted write"),
    }
}

async fn etags(store: &dyn Store, prefix: &str) -> Check {
    let name = "ETag stability";
    let key = format!("{prefix}etag");
    let put = match store.put(&key, b"same bytes".to_vec(), PutMode::Overwrite).await {
        Ok(e) => e,
        Err(e) => return Check::new(name, Outcome::Fail, format!("write: {e}")),
    };
    let mut seen = vec![put.clone()];
    for _ in 0..2 {
        match store.get(&key, None).await {
            Ok(Got::Found { etag, .. }) => seen.push(etag),
            other => return Check::new(name, Outcome::Fail, format!("read: {other:?}")),
        }
    }
    if let Ok(listed) = list_all(store, &key, None).await {
        seen.extend(listed.into_iter().filter(|m| m.key == key).map(|m| m.etag));
    }
    if seen.iter().all(|e| *e == put) {
        Check::new(name, Outcome::Pass, "PUT, GET and LIST agree on one ETag")
    } else {
        Check::new(
            name,
            Outcome::Warn,
            format!("ETags change for unchanged bytes ({}); fallback: every pull re-reads every head, costing a GET per replica", seen.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::quirky::{Quirk, Quirky};
    use crate::store::LocalStore;

    fn outcomes(checks: &[Check]) -> Vec<(&'static str, Outcome)> {
        checks.iter().map(|c| (c.name, c.outcome)).collect()
    }

    #[tokio::test]
    async fn a_sound_store_passes_every_check_and_is_left_clean() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let checks = run(&store, Some(120)).await;
        assert!(checks.iter().all(|c| c.outcome == Outcome::Pass), "{checks:?}");
        assert_eq!(checks.len(), 7);
        assert!(list_all(&store, "", None).await.unwrap().is_empty(), "the scratch prefix is removed");
    }

    #[tokio::test]
    async fn each_misbehaving_variant_is_reported() {
        for (quirk, check, outcome) in [
            (Quirk::IgnoresIfNoneMatch, "create-only PUT (If-None-Match)", Outcome::Fail),
            (Quirk::AnswersNotModified, "create-only PUT (If-None-Match)", Outcome::Warn),
            (Quirk::IgnoresIfMatch, "PUT with If-Match", Outcome::Fail),
            (Quirk::UnstableEtags, "ETag stability", Outcome::Warn),
            (Quirk::IgnoresStartAfter, "list order and paging", Outcome::Fail),
            (Quirk::NoMultipart, "multipart upload", Outcome::Warn),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Quirky::new(LocalStore::open(dir.path()).unwrap(), quirk);
            let checks = run(&store, None).await;
            let got = outcomes(&checks);
            assert!(got.contains(&(check, outcome)), "{quirk:?}: {got:?}");
            let others_pass = got.iter().filter(|(name, _)| *name != check).all(|(_, o)| *o == Outcome::Pass);
            assert!(others_pass, "{quirk:?}: only its own check is affected: {got:?}");
        }
    }

    #[tokio::test]
    async fn a_clock_a_day_off_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let checks = run(&store, Some(-2 * 86_400_000)).await;
        assert!(outcomes(&checks).contains(&("clock skew", Outcome::Fail)));
    }
}
