//! An object's meta as pingora serializes it, shared by the disk tier (which stores it
//! in a file's header) and the fill readers (which hand it to every waiter). A leaf
//! module: the readers do not import the disk tier for it.

use pingora_cache::CacheMeta;
use pingora_error::Result;

/// Pingora's serialized meta: what the header stores and readers deserialize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaBytes {
    pub internal: Vec<u8>,
    pub header: Vec<u8>,
}

impl MetaBytes {
    pub fn from_meta(meta: &CacheMeta) -> Result<Self> {
        let (internal, header) = meta.serialize()?;
        Ok(Self { internal, header })
    }

    pub fn to_meta(&self) -> Result<CacheMeta> {
        CacheMeta::deserialize(&self.internal, &self.header)
    }

    pub fn len(&self) -> usize {
        self.internal.len() + self.header.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
