//! The disk tier as a pingora-cache `Storage` of its own (the tiered store uses the
//! lower-level API instead), `update_meta` in place, and a writer for tools and tests.

use std::any::Any;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta, Storage};
use pingora_error::Result;

use super::format::{self, MetaBytes, ObjectRef};
use super::io::{self, DiskWriter, Inspected};
use super::{CacheError, DiskStorage};
use crate::cache::declared_len;
use crate::cache::stream::StreamFill;

impl DiskStorage {
    fn forget_fill(&self, fill: &StreamFill) {
        self.fills.forget(fill);
    }

    /// Purges the object an index key names (a purge by hash): its fills in progress and,
    /// when one of them or the index knows the object, its file. During the restart scan
    /// a file not yet indexed cannot be found this way: bans use the path instead
    /// (`TieredStorage::purge_hash`).
    pub(crate) async fn purge_key(&'static self, key: &HashBinary) -> bool {
        self.purge_entry(*key, None).await
    }

    /// Rewrites the meta of a stored object in place when it fits its header.
    pub(crate) async fn rewrite_meta(&'static self, obj: ObjectRef, meta: MetaBytes) -> bool {
        let path = obj.path(self.dir());
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if io::is_absent(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            let Ok(Inspected::Ours(h)) = io::inspect(&file, &obj, len)? else {
                return Ok(false);
            };
            let header_len = usize::try_from(h.header_len).unwrap_or(usize::MAX);
            let Some(buf) = format::encode(&obj, &meta, header_len, h.body_len, h.body_crc) else {
                return Ok(false);
            };
            file.write_all_at(&buf, 0)?;
            Ok(true)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match res {
            Ok(done) => done,
            Err(e) => {
                self.write_failed("update meta", &obj.path(self.dir()), e);
                false
            }
        }
    }
}

/// Writes a complete object file the way a fill would (header, body, rename) on the
/// calling thread, with the given mtime. For tools and tests that seed a directory.
/// Returns the file's length.
pub fn seed_object(
    dir: &Path,
    obj: ObjectRef,
    content_type: &str,
    body: &[u8],
    mtime: Option<SystemTime>,
) -> std::io::Result<u64> {
    let meta = format::seed_meta(&obj, content_type, body.len() as u64)
        .and_then(|m| MetaBytes::from_meta(&m))
        .map_err(std::io::Error::other)?;
    let header_len = format::header_len_for(meta.len());
    let crc = crc32fast::hash(body);
    let header = format::encode(&obj, &meta, header_len, body.len() as u64, Some(crc))
        .ok_or_else(|| std::io::Error::other("meta too large"))?;
    let dest = obj.path(dir);
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let temp = parent.join(format!(".{}.seed", obj.hex()));
    let file = io::create_temp(&temp)?;
    file.write_all_at(&header, 0)?;
    file.write_all_at(body, header_len as u64)?;
    if let Some(t) = mtime {
        file.set_modified(t)?;
    }
    drop(file);
    std::fs::rename(&temp, &dest)?;
    Ok((header_len + body.len()) as u64)
}

/// Writes one fill of the disk tier used on its own.
struct DiskMissHandler {
    store: &'static DiskStorage,
    writer: Option<DiskWriter>,
    fill: Arc<StreamFill>,
    tag: U64WriteId,
    finished: bool,
}

impl DiskMissHandler {
    fn abort(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.writer = None; // removes the temp file
        self.fill.body.abort();
        self.store.forget_fill(&self.fill);
    }
}

#[async_trait]
impl HandleMiss for DiskMissHandler {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(crate::cache::CacheError::Aborted.into_pingora());
        };
        if let Err(e) = writer.write(&data).await {
            self.abort();
            return Err(e.into_pingora());
        }
        if let Err(e) = self.fill.body.record(data, eof, true) {
            self.abort();
            return Err(e.into_pingora());
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let Some(writer) = self.writer.take() else {
            return Err(crate::cache::CacheError::Aborted.into_pingora());
        };
        let charged = match writer.finish(&self.fill.purged).await {
            Ok(n) => n,
            Err(CacheError::Purged) => 0,
            Err(e) => {
                self.abort();
                return Err(e.into_pingora());
            }
        };
        self.fill.body.complete(None);
        self.finished = true;
        self.store.forget_fill(&self.fill);
        Ok(MissFinishType::Created(
            usize::try_from(charged).unwrap_or(usize::MAX),
        ))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for DiskMissHandler {
    fn drop(&mut self) {
        if !self.finished {
            self.abort();
        }
    }
}

#[async_trait]
impl Storage for DiskStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(obj) = ObjectRef::from_key(key) else {
            return Ok(None);
        };
        if let Some(fill) = self.fills.active(&obj.key_hash()) {
            return fill.hit().map(Some);
        }
        Ok(self
            .lookup_object(obj)
            .await
            .map(|(meta, hit)| (meta, Box::new(hit) as HitHandler)))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        let Ok(id) = U64WriteId::try_from(tag).map(u64::from) else {
            return Ok(None);
        };
        let fill = self.fills.by_id(&key.combined_bin(), id);
        fill.map(|f| f.hit()).transpose()
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let obj = ObjectRef::from_key(key).ok_or_else(|| CacheError::BadKey.into_pingora())?;
        let meta_bytes = Arc::new(MetaBytes::from_meta(meta)?);
        let writer = self
            .begin_write(obj, meta_bytes.clone(), declared_len(meta))
            .await
            .map_err(CacheError::into_pingora)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fill = Arc::new(StreamFill::new(
            obj.key_hash(),
            id,
            meta_bytes,
            Some(writer.reader_file()),
            false,
            0,
        ));
        self.fills.insert(fill.clone());
        Ok(Box::new(DiskMissHandler {
            store: self,
            writer: Some(writer),
            fill,
            tag: id.into(),
            finished: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        if self.purge_key(&target.key().combined_bin()).await {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let Some(obj) = ObjectRef::from_key(key) else {
            return Ok(false);
        };
        Ok(self.rewrite_meta(obj, MetaBytes::from_meta(meta)?).await)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
