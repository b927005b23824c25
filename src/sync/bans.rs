//! `image_bans` -> the ban set and purges: new bans by `id` every round, all of them
//! every `full_reread` (which also sees unbans: Shimmie deletes the row).

use std::time::{Instant, SystemTime};

use super::{LoopState, SyncService};
use crate::object::Md5;
use crate::shimmie::SourceError;

impl SyncService {
    pub(super) async fn sync_bans(&self, st: &mut LoopState) -> Result<(), SourceError> {
        let bans = self.target.bans();
        let page = self.opts.ban_page.max(1);
        let full_reread = self.opts.full_reread;
        let full_due = st.last_full.is_none_or(|t| t.elapsed() >= full_reread);
        let mut added = Vec::new();
        if full_due {
            let started = Instant::now();
            let batch = self
                .timed("reading image_bans", self.source.all_bans(page))
                .await?;
            let took = started.elapsed();
            let read = batch.read;
            let diff = bans.replace_all(batch.rows.iter().map(|r| r.hash.to_u128()).collect());
            // Lower than before if the newest bans were deleted: ids only grow, so
            // nothing new can hide below it.
            st.cursor = batch.last_id.unwrap_or(i64::MIN);
            st.last_full = Some(Instant::now());
            tracing::info!(
                "sync: full ban read: {} bans ({read} rows, {} malformed skipped), {} new, {} lifted, in {took:.0?}",
                bans.len(),
                batch.skipped,
                diff.added.len(),
                diff.removed.len()
            );
            for hash in diff.removed.iter().take(20) {
                tracing::info!("sync: ban lifted: {}", Md5::from_u128(*hash));
            }
            st.dirty |= !diff.added.is_empty() || !diff.removed.is_empty();
            added = diff.added;
            self.update(|s| {
                s.last_full_read = Some(took);
                s.last_full_reread = Some(SystemTime::now());
            });
        } else {
            loop {
                let call = self.source.bans_after(st.cursor, page);
                let batch = self.timed("reading image_bans", call).await?;
                if let Some(last) = batch.last_id {
                    st.cursor = st.cursor.max(last);
                }
                let hashes: Vec<u128> = batch.rows.iter().map(|r| r.hash.to_u128()).collect();
                added.extend(bans.insert_many(&hashes));
                if batch.read < page {
                    break;
                }
            }
            st.dirty |= !added.is_empty();
        }
        // The set already answers 404 for these; purging frees the caches.
        if !added.is_empty() {
            let count = added.len();
            tracing::info!("sync: {count} new bans: purging them from every cache tier");
            for hash in added {
                let hash = Md5::from_u128(hash);
                if count <= 20 {
                    tracing::info!("sync: banned {hash}");
                }
                self.target.purge(hash).await;
            }
            // metrics: shimmer_sync_purges_total += count
            self.update(|s| s.purges += count as u64);
        }
        Ok(())
    }
}
