//! A bucket that is a plain directory: the embedded default, no server needed.
//!
//! Atomicity comes from the file system: every put writes a temporary file, fsyncs
//! it, then links (create-only) or renames (replace) it into place and fsyncs the
//! directory. Conditional replaces take an advisory lock on `.dimple-store.lock`, so
//! two processes on one machine cannot both win an `Update` race. The ETag of a file
//! is derived from its inode, size and mtime: every put makes a new inode, so the
//! ETag changes on every write without reading the content. All file-system work
//! runs on tokio's blocking pool, not on the executor's threads.

use super::{Got, ObjectMeta, Part, PutMode, Store, StoreError, StoreResult, LIST_PAGE};
use async_trait::async_trait;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
}

const LOCK_FILE: &str = ".dimple-store.lock";
const TMP_PREFIX: &str = ".tmp-";

impl LocalStore {
    /// Opens (creating if needed) a directory bucket.
    pub fn open(root: impl Into<PathBuf>) -> StoreResult<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_err(&root, e))?;
        Ok(LocalStore { root })
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with(TMP_PREFIX));
        if !valid {
            return Err(StoreError::Refused(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn etag(meta: &fs::Metadata) -> String {
        format!("{:x}-{:x}-{:x}", meta.ino(), meta.len(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000)
    }

    fn put_blocking(&self, key: &str, bytes: &[u8], mode: &PutMode) -> StoreResult<String> {
        self.put_from(key, &mut std::io::Cursor::new(bytes), mode)
    }

    /// Writes what `source` yields to a temporary file, then moves it into place
    /// under `mode`'s precondition.
    fn put_from(&self, key: &str, source: &mut dyn std::io::Read, mode: &PutMode) -> StoreResult<String> {
        let dest = self.path(key)?;
        let dir = dest.parent().expect("keys have a parent").to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            std::io::copy(source, &mut f).map_err(|e| io_err(&tmp, e))?;
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
            drop(f);
            match mode {
                PutMode::Create => match fs::hard_link(&tmp, &dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return Err(StoreError::PreconditionFailed(format!("{key} already exists")))
                    }
                    Err(e) => return Err(io_err(&dest, e)),
                },
                PutMode::Overwrite => fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?,
                PutMode::Update(expected) => {
                    let _lock = self.lock()?;
                    let current = match fs::metadata(&dest) {
                        Ok(m) => Some(Self::etag(&m)),
                        Err(e) if e.kind() == ErrorKind::NotFound => None,
                        Err(e) => return Err(io_err(&dest, e)),
                    };
                    if current.as_deref() != Some(expected.as_str()) {
                        return Err(StoreError::PreconditionFailed(format!("{key} changed since it was read")));
                    }
                    fs::rename(&tmp, &dest).map_err(|e| io_err(&dest, e))?;
                }
            }
            sync_dir(&dir)?;
            let meta = fs::metadata(&dest).map_err(|e| io_err(&dest, e))?;
            Ok(Self::etag(&meta))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn lock(&self) -> StoreResult<File> {
        let path = self.root.join(LOCK_FILE);
        let f =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| io_err(&path, e))?;
        f.lock().map_err(|e| io_err(&path, e))?;
        Ok(f)
    }
}

/// A directory the user cannot write is a set-up error to fix, not an internal one.
fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotADirectory => StoreError::Refused(
            format!("cannot write to the bucket directory {}: {e} (check its owner and permissions)", path.display()),
        ),
        _ => StoreError::Io(format!("{}: {e}", path.display())),
    }
}

fn modified_ms(meta: &fs::Metadata) -> u64 {
    (meta.mtime().max(0) as u64) * 1000 + meta.mtime_nsec().max(0) as u64 / 1_000_000
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

impl LocalStore {
    /// Runs file-system work on tokio's blocking pool, never on an executor thread (a
    /// slow disk or an fsync must not stall other tasks); inline outside a runtime.
    async fn off_executor<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let me = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt
                .spawn_blocking(move || f(&me))
                .await
                .map_err(|e| StoreError::Io(format!("file-system task failed: {e}")))?,
            Err(_) => f(&me),
        }
    }

    fn list_blocking(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        // Walk the deepest directory that the prefix names, in key order, and stop
        // one past a page: a page costs what it returns, not the whole tree.
        let (dir_rel, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut page = Vec::new();
        let want = LIST_PAGE + 1;
        self.walk_sorted(&self.root.join(dir_rel), dir_rel, prefix, start_after, &mut page, want)?;
        let more = page.len() > LIST_PAGE;
        page.truncate(LIST_PAGE);
        Ok((page, more))
    }

    /// Appends to `out`, in byte order of their keys, the objects under `dir`
    /// (key `rel`) whose key starts with `prefix` and comes after `after`, until
    /// `out` holds `limit`. Subtrees wholly before `after` are not read.
    fn walk_sorted(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        after: Option<&str>,
        out: &mut Vec<ObjectMeta>,
        limit: usize,
    ) -> StoreResult<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(dir, e)),
        };
        // (sort key, key, is_dir): a directory sorts as "name/", so that "a/x"
        // comes after "a.json" as the bytes of the keys say.
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if name.starts_with(TMP_PREFIX) || name == LOCK_FILE {
                continue;
            }
            let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let is_dir = match entry.file_type() {
                Ok(t) => t.is_dir(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path(), e)),
            };
            let sort = if is_dir { format!("{key}/") } else { key.clone() };
            children.push((sort, key, is_dir));
        }
        children.sort();
        for (sort, key, is_dir) in children {
            if out.len() >= limit {
                return Ok(());
            }
            if is_dir {
                // Everything under it starts with "key/".
                let relevant = sort.starts_with(prefix) || prefix.starts_with(&sort);
                let not_all_before = after.is_none_or(|a| a.starts_with(&sort) || sort.as_str() > a);
                if relevant && not_all_before {
                    self.walk_sorted(&self.root.join(&key), &key, prefix, after, out, limit)?;
                }
            } else if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                let path = self.root.join(&key);
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path, e)),
                };
                out.push(ObjectMeta {
                    key,
                    etag: Self::etag(&meta),
                    size: meta.len(),
                    modified_ms: modified_ms(&meta),
                });
            }
        }
        Ok(())
    }

    fn get_blocking(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        let path = self.path(key)?;
        // Open first, then stat the open file: the ETag then belongs to the bytes read.
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound(key.to_owned())),
            Err(e) => return Err(io_err(&path, e)),
        };
        let meta = f.metadata().map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        let etag = Self::etag(&meta);
        if if_none_match == Some(etag.as_str()) {
            return Ok(Got::NotModified);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut f, &mut bytes).map_err(|e| io_err(&path, e))?;
        Ok(Got::Found { bytes, etag })
    }

    fn get_to_file_blocking(&self, key: &str, dest: &Path) -> StoreResult<u64> {
        let path = self.path(key)?;
        match fs::copy(&path, dest) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::NotFound && !path.exists() => Err(StoreError::NotFound(key.to_owned())),
            Err(e) => Err(io_err(dest, e)),
        }
    }

    /// A multipart upload's parts wait in `.tmp-multipart/<upload>/` (hidden from
    /// listings like every `.tmp-` name) until the finish joins them.
    fn upload_dir(&self, upload: &str) -> StoreResult<PathBuf> {
        if upload.is_empty() || !upload.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Refused(format!("invalid upload id {upload:?}")));
        }
        Ok(self.root.join(format!("{TMP_PREFIX}multipart")).join(upload))
    }

    fn part_path(&self, upload: &str, number: u32) -> StoreResult<PathBuf> {
        Ok(self.upload_dir(upload)?.join(format!("{number:05}")))
    }

    fn parts_blocking(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        let dir = self.upload_dir(upload)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("{key}: no multipart upload {upload}")))
            }
            Err(e) => return Err(io_err(&dir, e)),
        };
        let mut parts = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let Some(number) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let meta = entry.metadata().map_err(|e| io_err(&entry.path(), e))?;
            parts.push(Part { number, size: meta.len(), etag: Self::etag(&meta) });
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    fn finish_blocking(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        let have = self.parts_blocking(key, upload)?;
        let mut files = Vec::with_capacity(parts.len());
        for p in parts {
            if !have.iter().any(|h| h.number == p.number && h.etag == p.etag) {
                return Err(StoreError::Refused(format!("{key}: part {} of upload {upload} is not stored", p.number)));
            }
            let path = self.part_path(upload, p.number)?;
            files.push(File::open(&path).map_err(|e| io_err(&path, e))?);
        }
        let mut joined: Box<dyn std::io::Read> = Box::new(std::io::empty());
        for f in files {
            joined = Box::new(joined.chain(f));
        }
        let etag = self.put_from(key, &mut joined, &PutMode::Overwrite)?;
        let _ = fs::remove_dir_all(self.upload_dir(upload)?);
        Ok(etag)
    }

    fn delete_blocking(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        let (prefix, after) = (prefix.to_owned(), start_after.map(str::to_owned));
        self.off_executor(move |s| s.list_blocking(&prefix, after.as_deref())).await
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<Got> {
        let (key, inm) = (key.to_owned(), if_none_match.map(str::to_owned));
        self.off_executor(move |s| s.get_blocking(&key, inm.as_deref())).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> StoreResult<String> {
        let key = key.to_owned();
        self.off_executor(move |s| s.put_blocking(&key, &bytes, &mode)).await
    }

    async fn put_file(&self, key: &str, path: &Path, mode: PutMode) -> StoreResult<String> {
        let (key, path) = (key.to_owned(), path.to_owned());
        self.off_executor(move |s| {
            let mut f = File::open(&path).map_err(|e| io_err(&path, e))?;
            s.put_from(&key, &mut f, &mode)
        })
        .await
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> StoreResult<u64> {
        let (key, dest) = (key.to_owned(), dest.to_owned());
        self.off_executor(move |s| s.get_to_file_blocking(&key, &dest)).await
    }

    async fn get_to_file_hashed(&self, key: &str, dest: &Path) -> StoreResult<(u64, String)> {
        let (key, dest) = (key.to_owned(), dest.to_owned());
        self.off_executor(move |s| {
            let n = s.get_to_file_blocking(&key, &dest)?;
            let sha = super::file_sha256(&dest).map_err(|e| io_err(&dest, e))?;
            Ok((n, sha))
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let key = key.to_owned();
        self.off_executor(move |s| s.delete_blocking(&key)).await
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let key = key.to_owned();
        self.off_executor(move |s| {
            let path = s.path(&key)?;
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    Ok(Some(ObjectMeta { etag: Self::etag(&m), size: m.len(), modified_ms: modified_ms(&m), key }))
                }
                Ok(_) => Ok(None),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&path, e)),
            }
        })
        .await
    }

    async fn multipart_start(&self, key: &str) -> StoreResult<String> {
        self.path(key)?;
        let upload = format!("{:032x}", rand::random::<u128>());
        let dir = self.upload_dir(&upload)?;
        self.off_executor(move |_| fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))).await?;
        Ok(upload)
    }

    async fn multipart_put(&self, key: &str, upload: &str, number: u32, bytes: bytes::Bytes) -> StoreResult<String> {
        let path = self.part_path(upload, number)?;
        let key = key.to_owned();
        self.off_executor(move |_| {
            if !path.parent().is_some_and(Path::exists) {
                return Err(StoreError::NotFound(format!("{key}: no such multipart upload")));
            }
            let tmp = path.with_extension("part");
            fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &path)).map_err(|e| io_err(&path, e))?;
            let meta = fs::metadata(&path).map_err(|e| io_err(&path, e))?;
            Ok(Self::etag(&meta))
        })
        .await
    }

    async fn multipart_parts(&self, key: &str, upload: &str) -> StoreResult<Vec<Part>> {
        let (key, upload) = (key.to_owned(), upload.to_owned());
        self.off_executor(move |s| s.parts_blocking(&key, &upload)).await
    }

    async fn multipart_finish(&self, key: &str, upload: &str, parts: &[Part]) -> StoreResult<String> {
        let (key, upload, parts) = (key.to_owned(), upload.to_owned(), parts.to_vec());
        self.off_executor(move |s| s.finish_blocking(&key, &upload, &parts)).await
    }

    async fn multipart_abort(&self, _key: &str, upload: &str) -> StoreResult<()> {
        let dir = self.upload_dir(upload)?;
        self.off_executor(move |_| match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err(&dir, e)),
            _ => Ok(()),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &LocalStore, prefix: &str, after: Option<&str>) -> Vec<String> {
        s.list_blocking(prefix, after).unwrap().0.into_iter().map(|m| m.key).collect()
    }

    #[test]
    fn listing_follows_the_byte_order_of_keys_across_directories_and_resumes_after_any_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        let all = ["r/a.json", "r/a/x", "r/a/y/z", "r/a0", "r/b/c", "r/b/d", "s/q"];
        for k in all.iter().rev() {
            s.put_blocking(k, b"x", &PutMode::Overwrite).unwrap();
        }
        let mut want: Vec<&str> = all.iter().copied().filter(|k| k.starts_with("r/")).collect();
        want.sort();
        assert_eq!(keys(&s, "r/", None), want);
        for (i, after) in want.iter().enumerate() {
            assert_eq!(keys(&s, "r/", Some(after)), want[i + 1..], "after {after}");
        }
        assert_eq!(keys(&s, "r/a/", None), ["r/a/x", "r/a/y/z"]);
        assert_eq!(keys(&s, "r/b/c", None), ["r/b/c"]);
    }
}
