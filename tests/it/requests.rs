//! Request economy (SPEC 5): a no-op sync among R replicas costs ceil(2R/1000)
//! LIST requests and nothing else; a sync that brings k new batches from m replicas
//! costs at most 1 + m + k requests (plus one GET per replica whose published
//! schema changed since it was last read).

use crate::support::*;
use dimple::store::RequestStats;

fn noop_sync_costs_one_list(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "noop-50") else { return Ok(()) };
    let store = g.store();
    let mut replicas: Vec<dimple::Replica> = (0..50).map(|i| g.replica(&format!("r{i:02}"))).collect();
    for (i, r) in replicas.iter_mut().enumerate() {
        r.conn().execute("INSERT INTO t(id, a) VALUES (?1, ?2)", rusqlite::params![format!("k{i}"), i])?;
        block_on(dimple::push(r, &store))?;
    }
    for r in replicas.iter_mut() {
        block_on(dimple::sync(r, &store))?;
    }
    let r = &mut replicas[7];
    let report = block_on(dimple::sync(r, &store))?;
    assert_eq!(
        report.requests,
        RequestStats { list: 1, total: 1, ..RequestStats::default() },
        "a no-op sync among 50 replicas"
    );
    assert_eq!(rows(r.conn(), "t").len(), 50);
    Ok(())
}

#[test]
fn a_noop_sync_among_50_replicas_costs_exactly_one_list_request() -> TestResult {
    noop_sync_costs_one_list(Backend::Local)
}

#[test]
fn a_noop_sync_among_50_replicas_costs_exactly_one_list_request_on_s3() -> TestResult {
    noop_sync_costs_one_list(Backend::S3)
}

fn new_batches_cost_one_get_each(backend: Backend) -> TestResult {
    let Some(g) = Group::on(backend, "k-from-m") else { return Ok(()) };
    let store = g.store();
    let mut reader = g.replica("reader");
    let mut writers: Vec<dimple::Replica> = (0..4).map(|i| g.replica(&format!("w{i}"))).collect();
    // Every writer has pushed once and the reader has read their schemas.
    for w in writers.iter_mut() {
        block_on(dimple::sync(w, &store))?;
    }
    block_on(dimple::sync(&mut reader, &store))?;
    // m = 3 writers push k = 1 + 2 + 3 batches; the fourth stays quiet.
    let mut k = 0;
    for (m, w) in writers.iter_mut().take(3).enumerate() {
        for b in 0..=m {
            w.conn().execute("INSERT INTO t(id, a) VALUES (?1, 1)", [format!("{m}-{b}")])?;
            block_on(dimple::push(w, &store))?;
            k += 1;
        }
    }
    let before = store.stats();
    let report = block_on(dimple::pull(&mut reader, &store))?;
    let used = store.stats().since(&before);
    assert_eq!(report.batches, k);
    assert!(used.total <= 1 + 3 + k as u64, "{used:?} for k={k} batches from m=3 replicas");
    assert_eq!(used.list, 1);
    assert_eq!(used.put, 0);
    Ok(())
}

#[test]
fn a_sync_bringing_k_batches_from_m_replicas_costs_at_most_1_plus_m_plus_k_requests() -> TestResult {
    new_batches_cost_one_get_each(Backend::Local)
}

#[test]
fn a_sync_bringing_k_batches_from_m_replicas_costs_at_most_1_plus_m_plus_k_requests_on_s3() -> TestResult {
    new_batches_cost_one_get_each(Backend::S3)
}

#[test]
fn a_changed_schema_costs_one_get_once() -> TestResult {
    let g = Group::new();
    let store = g.store();
    let (mut w, mut reader) = (g.replica("w"), g.replica("reader"));
    block_on(dimple::sync(&mut w, &store))?;
    block_on(dimple::sync(&mut reader, &store))?;
    w.conn().execute_batch("ALTER TABLE t ADD COLUMN extra TEXT")?;
    w.conn().execute("INSERT INTO t(id, extra) VALUES ('k', 'x')", [])?;
    block_on(dimple::push(&mut w, &store))?;
    let pull = |reader: &mut dimple::Replica| -> Result<RequestStats, Box<dyn std::error::Error>> {
        let before = store.stats();
        block_on(dimple::pull(reader, &store))?;
        Ok(store.stats().since(&before))
    };
    let used = pull(&mut reader)?;
    assert_eq!((used.list, used.get, used.total), (1, 3, 4), "LIST, then the head, the batch and the new schema");
    w.conn().execute("INSERT INTO t(id, extra) VALUES ('k2', 'y')", [])?;
    block_on(dimple::push(&mut w, &store))?;
    let used = pull(&mut reader)?;
    assert_eq!((used.list, used.get, used.total), (1, 2, 3), "an unchanged schema is not read again");
    Ok(())
}
