//! Moving values stored out of line between this replica and `blobs/`.
//!
//! Everything streams through files: uploads read the captured file in parts,
//! downloads go to a file that is decoded and hashed in pieces before any row sees
//! it. A value of [`MULTIPART_FROM`] or more is uploaded in [`PART`]-sized parts;
//! the upload id is kept beside the file (`<sha256>.upload`), so after a crash or a
//! lost connection the next push asks the store which parts it holds and sends
//! only the rest.

use super::{local_file, reference, Moved};
use crate::codec::{Codec, Kind};
use crate::error::{Error, Result};
use crate::layout;
use crate::merge::{Change, Merger};
use crate::replica::Replica;
use crate::store::{Part, PutMode, Store, StoreError};
use crate::track::ROW;
use crate::value::Ref;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Size of each part of a multipart upload (S3 needs at least 5 MiB).
pub const PART: u64 = 8 << 20;
/// Values at least this big (as stored) are uploaded in parts.
pub const MULTIPART_FROM: u64 = 2 * PART;
/// Values, or parts of one value, in flight at once: memory stays under
/// CONCURRENCY parts.
const CONCURRENCY: usize = 4;
/// A progress bar is drawn (on a terminal) for transfers at least this big.
const PROGRESS_FROM: u64 = 32 << 20;

/// The bucket key of the value `r`: its sha256, or in an encrypted group a keyed
/// hash of it ([`crate::seal::blob_name`]).
pub fn object_key(codec: &Codec, r: &Ref) -> Result<String> {
    Ok(layout::blob_key(&match codec {
        Codec::Plain => r.sha256.clone(),
        Codec::Sealed(ring) => crate::seal::blob_name(ring, &r.sha256)?,
    }))
}

/// Bytes moved, drawn as a bar on stderr when it is a terminal and the transfer is big.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64, what: &str) -> Progress {
        use std::io::IsTerminal;
        if total < PROGRESS_FROM || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        Progress(Some(bar))
    }

    fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// Uploads every value of `refs` (what a batch references) that the bucket does not hold yet:
/// called before the batch naming them is written, so no replica ever reads a
/// reference whose bytes are not there.
pub async fn send(r: &Replica, store: &dyn Store, codec: &Codec, refs: BTreeSet<Ref>) -> Result<Moved> {
    if refs.is_empty() {
        return Ok(Moved::default());
    }
    let out = r.side().blobs_out()?;
    let started = std::time::Instant::now();
    let total = refs.iter().map(|r| r.size).sum();
    let progress = Progress::new(total, "uploading values");
    let sent: Vec<Moved> = futures::stream::iter(refs.iter().map(|rf| send_one(store, codec, &out, rf, &progress)))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut moved = Moved::default();
    sent.into_iter().for_each(|m| moved.add(m));
    Ok(moved.timed(started.elapsed()))
}

async fn send_one(store: &dyn Store, codec: &Codec, out: &Path, rf: &Ref, progress: &Progress) -> Result<Moved> {
    let key = object_key(codec, rf)?;
    let file = out.join(&rf.sha256);
    let have = std::fs::metadata(&file).is_ok_and(|m| m.len() == rf.size);
    // Content-addressed: whoever stored it first stored the same value.
    if store.stat(&key).await?.is_some() {
        progress.inc(rf.size);
        return Ok(Moved::default());
    }
    if !have {
        return Err(Error::Invalid(format!(
            "the bytes of a value stored out of line ({}, {} bytes) are neither in the bucket nor in {}; \
             write the value again",
            rf.sha256,
            rf.size,
            out.display()
        )));
    }
    let source = match codec {
        Codec::Plain => file.clone(),
        Codec::Sealed(_) => {
            // Sealed once and kept until uploaded: a resumed upload sends the same bytes.
            let sealed = file.with_extension("sealed");
            if !sealed.exists() {
                let tmp = file.with_extension("sealing-copy");
                std::fs::copy(&file, &tmp).map_err(|e| Error::io(&tmp, e))?;
                codec.encode_file(Kind::Blob, &key, &tmp)?;
                std::fs::rename(&tmp, &sealed).map_err(|e| Error::io(&sealed, e))?;
            }
            sealed
        }
    };
    let size = std::fs::metadata(&source).map_err(|e| Error::io(&source, e))?.len();
    if size >= MULTIPART_FROM {
        multipart(store, &key, &source, size, &file.with_extension("upload"), progress).await?;
    } else {
        store.put_file(&key, &source, PutMode::Overwrite).await?;
        progress.inc(rf.size);
    }
    if source != file {
        let _ = std::fs::remove_file(&source);
    }
    Ok(Moved { count: 1, bytes: size, millis: 0 })
}

/// The upload in progress for one value, kept beside its file.
#[derive(serde::Serialize, serde::Deserialize)]
struct UploadState {
    key: String,
    upload: String,
    size: u64,
}

async fn multipart(
    store: &dyn Store,
    key: &str,
    source: &Path,
    size: u64,
    state_path: &Path,
    progress: &Progress,
) -> Result<()> {
    let saved: Option<UploadState> = std::fs::read(state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<UploadState>(&b).ok())
        .filter(|s| s.key == key && s.size == size);
    let resumed = match saved {
        Some(s) => match store.multipart_parts(key, &s.upload).await {
            Ok(parts) => Some((s.upload, parts)),
            Err(StoreError::NotFound(_)) => None, // finished, aborted or expired
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let (upload, held) = match resumed {
        Some(r) => r,
        None => {
            let upload = store.multipart_start(key).await?;
            let state = UploadState { key: key.to_owned(), upload: upload.clone(), size };
            crate::secret::write(state_path, &serde_json::to_string(&state).expect("serializes"))?;
            (upload, Vec::new())
        }
    };
    let count = size.div_ceil(PART) as u32;
    let part_len = |n: u32| PART.min(size - (n as u64 - 1) * PART);
    let mut done: Vec<Part> =
        held.into_iter().filter(|p| (1..=count).contains(&p.number) && p.size == part_len(p.number)).collect();
    progress.inc(done.iter().map(|p| p.size).sum());
    let todo: Vec<u32> = (1..=count).filter(|n| !done.iter().any(|p| p.number == *n)).collect();
    let upload_ref = upload.as_str();
    let sent: Vec<Part> = futures::stream::iter(todo.into_iter().map(|n| async move {
        let len = part_len(n);
        let bytes = read_part(source, (n as u64 - 1) * PART, len)?;
        let etag = store.multipart_put(key, upload_ref, n, bytes.into()).await?;
        progress.inc(len);
        Ok::<_, Error>(Part { number: n, size: len, etag })
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect()
    .await?;
    done.extend(sent);
    done.sort_by_key(|p| p.number);
    match store.multipart_finish(key, &upload, &done).await {
        Ok(_) => {}
        // A finish that landed before its answer was lost: the upload is gone and
        // the object is there.
        Err(StoreError::NotFound(_)) if store.stat(key).await?.is_some_and(|m| m.size == size) => {}
        Err(e) => return Err(e.into()),
    }
    let _ = std::fs::remove_file(state_path);
    Ok(())
}

fn read_part(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// What became of one download.
enum Got {
    Here(Moved),
    /// Not in the bucket (deleted, or never uploaded by a faulty writer).
    Absent,
}

/// Downloads the value `rf` into `dir/<sha256>`, checked: its size and sha256
/// must be the reference's, or it is refused as bad data from the bucket.
async fn download(store: &dyn Store, codec: &Codec, dir: &Path, rf: &Ref, progress: &Progress) -> Result<Got> {
    let dest = dir.join(&rf.sha256);
    if std::fs::metadata(&dest).is_ok_and(|m| m.len() == rf.size) {
        return Ok(Got::Here(Moved::default()));
    }
    let key = object_key(codec, rf)?;
    let tmp = dir.join(format!("{}.{:08x}.part", rf.sha256, rand::random::<u32>()));
    // In the clear the stored bytes are the value: hashed as they arrive.
    let (n, stored_sha) = match store.get_to_file_hashed(&key, &tmp).await {
        Ok(got) => got,
        Err(StoreError::NotFound(_)) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Got::Absent);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    progress.inc(rf.size);
    let checked = match codec {
        Codec::Plain => Ok((stored_sha, n)),
        // Opened and hashed off the executor: other downloads go on meanwhile.
        Codec::Sealed(_) => {
            let (codec2, key2, tmp2) = (codec.clone(), key.clone(), tmp.clone());
            tokio::task::spawn_blocking(move || {
                codec2.decode_file(Kind::Blob, &key2, &tmp2)?;
                hash_file(&tmp2)
            })
            .await
            .map_err(|e| Error::Invalid(format!("checking {key}: {e}")))
            .and_then(|r| r)
        }
    }
    .and_then(|(sha, size)| {
        if size != rf.size || sha != rf.sha256 {
            return Err(Error::bad(
                &key,
                format!(
                    "its bytes do not match the reference: {size} bytes with sha256 {sha}, where the change says {} bytes with sha256 {}",
                    rf.size, rf.sha256
                ),
            ));
        }
        Ok(())
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(Got::Here(Moved { count: 1, bytes: n, millis: 0 }))
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let size = std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok((crate::hash::hex(&h.finalize()), size))
}

/// Before a pulled batch is applied (eager replicas): downloads and checks every
/// value it references that will win here, so that a value whose bytes do not
/// match refuses the batch before any of it is applied. A value that is not in
/// the bucket is applied as missing (see [`fetch_missing`]).
/// The values a batch stores out of line that its cells end with, gathered as
/// its changes are read (the batch is never held whole).
#[derive(Debug, Default)]
pub struct Referenced {
    /// Per cell that got a reference: the batch's last change of it, and its
    /// reference (None: a later change of the cell holds none).
    last: BTreeMap<(String, String, String), (String, Option<Ref>)>,
}

impl Referenced {
    /// Whether any cell ends with a reference: something a pull may download.
    pub fn any(&self) -> bool {
        self.last.values().any(|(_, rf)| rf.is_some())
    }

    /// Takes note of `c`, the batch's next change.
    pub fn see(&mut self, c: &Change) {
        if c.attribute == ROW {
            return;
        }
        let rf = reference(c.new_value.as_deref());
        // Most batches hold no reference: nothing to look up, nothing to copy.
        if rf.is_none() && self.last.is_empty() {
            return;
        }
        let cell = (c.entity_type.clone(), c.entity_id.clone(), c.attribute.clone());
        match (rf, self.last.get_mut(&cell)) {
            (Some(rf), _) => {
                self.last.insert(cell, (c.id.clone(), Some(rf)));
            }
            // An earlier reference of the cell is overwritten by a plain value.
            (None, Some(slot)) => *slot = (c.id.clone(), None),
            (None, None) => {}
        }
    }
}

pub async fn prefetch(r: &Replica, store: &dyn Store, codec: &Codec, refs: &Referenced) -> Result<Moved> {
    if super::fetch_policy(&r.sync)? == super::Fetch::Lazy {
        return Ok(Moved::default());
    }
    let side = r.side();
    let mut wanted = BTreeSet::new();
    // Values of cells this replica has no column for are not fetched: the change
    // waits in the log, and when the table is tracked or the column appears, the
    // value is applied as missing and fetched by the next pull.
    let mut columns: BTreeMap<&str, Option<crate::track::TableInfo>> = BTreeMap::new();
    for ((t, e, a), (id, rf)) in &refs.last {
        let Some(rf) = rf else { continue };
        if !columns.contains_key(t.as_str()) {
            let tracked = crate::track::recorded_columns(&r.sync, t)?.is_some();
            columns.insert(t, if tracked { crate::track::inspect(&r.sync, t)? } else { None });
        }
        if !columns[t.as_str()].as_ref().is_some_and(|info| info.has_column(a)) {
            continue;
        }
        let current = crate::log::winner(&r.sync, t, e, a)?.map(|w| w.id);
        if current.is_some_and(|cur| cur.as_str() >= id.as_str()) || local_file(side, rf).is_some() {
            continue; // loses here, or its bytes are here already
        }
        wanted.insert(rf.clone());
    }
    if wanted.is_empty() {
        return Ok(Moved::default());
    }
    let dir = side.blobs_in()?;
    let started = std::time::Instant::now();
    let progress = Progress::new(wanted.iter().map(|r| r.size).sum(), "downloading values");
    let got: Vec<Got> = futures::stream::iter(wanted.iter().map(|rf| download(store, codec, &dir, rf, &progress)))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut moved = Moved::default();
    for g in got {
        if let Got::Here(m) = g {
            moved.add(m);
        }
    }
    Ok(moved.timed(started.elapsed()))
}

/// What [`fetch_missing`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Fetched {
    pub moved: Moved,
    /// Cells filled.
    pub filled: u64,
    /// Values still missing (not in the bucket, or refused: see `problems`).
    pub still_missing: u64,
    pub problems: Vec<String>,
}

/// Downloads the values missing here (all of them, or one row's) and writes them
/// into their cells. A value whose bytes do not match its reference is recorded as
/// a problem of the replica that wrote it and stays missing.
pub async fn fetch_missing(
    r: &mut Replica,
    store: &dyn Store,
    codec: &Codec,
    only: Option<(&str, &str)>,
) -> Result<Fetched> {
    let all = super::missing(&r.sync)?;
    let list: Vec<_> = all.into_iter().filter(|m| only.is_none_or(|(t, e)| m.table == t && m.entity_id == e)).collect();
    let mut report = Fetched::default();
    if list.is_empty() {
        return Ok(report);
    }
    let side = r.side().clone();
    let dir = side.blobs_in()?;
    let refs: BTreeSet<&Ref> = list.iter().map(|m| &m.r).filter(|rf| local_file(&side, rf).is_none()).collect();
    let started = std::time::Instant::now();
    let progress = Progress::new(refs.iter().map(|r| r.size).sum(), "downloading values");
    let results: Vec<(&Ref, Result<Got>)> = futures::stream::iter(refs.into_iter().map(|rf| {
        let (dir, progress) = (&dir, &progress);
        async move { (rf, download(store, codec, dir, rf, progress).await) }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    drop(progress);
    let took = started.elapsed();
    let now = crate::clock::rfc3339(r.hlc.now_ms());
    for (rf, result) in results {
        match result {
            Ok(Got::Here(m)) => report.moved.add(m),
            Ok(Got::Absent) => {}
            Err(Error::BadData { origin, reason }) => {
                for m in list.iter().filter(|m| &m.r == rf) {
                    crate::problems::record(&r.sync, &m.author, &origin, &reason, &now)?;
                }
                report.problems.push(format!("{origin}: {reason}"));
            }
            Err(e) => return Err(e),
        }
    }
    report.moved = report.moved.timed(took);
    let tx = r.sync.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let merger = Merger::new(&tx)?;
        for m in &list {
            if local_file(&side, &m.r).is_none() {
                report.still_missing += 1;
            } else if merger.fill_missing(&m.table, &m.entity_id, &m.attribute, &m.r)? {
                report.filled += 1;
            }
        }
    }
    tx.commit()?;
    clear_in(r);
    Ok(report)
}

/// What every way of taking in other replicas' changes ends with: the values
/// still missing here (rebuilt tables, an earlier lazy policy, a blob that was
/// not there, a snapshot caught up from) fetched now unless this replica is
/// lazy, and the downloads forgotten.
pub async fn fetch_unless_lazy(r: &mut Replica, store: &dyn Store, codec: &Codec) -> Result<Fetched> {
    let fetched = if super::fetch_policy(&r.sync)? == super::Fetch::Eager {
        fetch_missing(r, store, codec, None).await?
    } else {
        Fetched::default()
    };
    clear_in(r);
    Ok(fetched)
}

/// Forgets downloaded values once they are in their rows (a crash leaves nothing
/// that the next pull does not clear).
pub fn clear_in(r: &Replica) {
    let dir = r.side().blobs_in_path();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Deletes captured values no unpushed change of this replica names any more.
pub fn sweep_out(r: &Replica) -> Result<()> {
    let dir = r.side().blobs_out_path();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
    // The references unpushed changes make, read once (not once per file).
    let mut needed: Option<std::collections::HashSet<String>> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (sha, ext) = name.split_once('.').unwrap_or((name.as_str(), ""));
        if sha.len() != 64 {
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path()); // a capture that crashed before its rename
            }
            continue;
        }
        let base = dir.join(sha);
        if !ext.is_empty() {
            if !base.exists() {
                let _ = std::fs::remove_file(e.path()); // a sealed copy or an upload left behind
            }
            continue;
        }
        let size = e.metadata().map_or(0, |m| m.len());
        let blob = Ref { sha256: sha.to_owned(), size, text: false }.encode();
        let text = Ref { sha256: sha.to_owned(), size, text: true }.encode();
        if needed.is_none() {
            let through = crate::meta::PushState::load(&r.sync)?.through;
            needed =
                Some(crate::outbox::unpushed_values(&r.sync, &through, |v| crate::blob::reference(Some(v)).is_some())?);
        }
        let needed = needed.as_ref().is_some_and(|n| n.contains(&blob) || n.contains(&text));
        if !needed {
            for x in ["sealed", "upload"] {
                let _ = std::fs::remove_file(dir.join(format!("{sha}.{x}")));
            }
            let _ = std::fs::remove_file(&base);
        }
    }
    Ok(())
}
