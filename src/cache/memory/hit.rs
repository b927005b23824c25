//! Reading a completed object: the body is one `Bytes`, so a hit (or a range of it) is a
//! refcounted slice, never a copy, and it is returned in one piece.

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::storage::HandleHit;
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheKey, Storage};
use pingora_error::Result;

use super::CacheError;

pub(super) struct CompleteHit {
    body: Bytes,
    pos: usize,
    end: usize,
    charged: usize,
}

impl CompleteHit {
    pub(super) fn new(body: Bytes, charged: usize) -> Self {
        Self {
            end: body.len(),
            body,
            pos: 0,
            charged,
        }
    }
}

#[async_trait]
impl HandleHit for CompleteHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let bytes = self.body.slice(self.pos..self.end);
        self.pos = self.end;
        Ok(Some(bytes))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    /// `end` is exclusive; an `end` past the body is cut to the body, as pingora expects.
    /// Each seek rewinds the reader, so one handler serves every part of a multipart range.
    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Err(CacheError::SeekPastEnd {
                start: start as u64,
                len: len as u64,
            }
            .into_pingora());
        }
        let end = end.map_or(len, |end| end.min(len));
        if end < start {
            return Err(CacheError::BadRange {
                start: start as u64,
                end: end as u64,
            }
            .into_pingora());
        }
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.charged
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
