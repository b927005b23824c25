//! `origin: shimmie`: Shimmie's S3 settings, followed like its link templates. Each
//! round reads the five rows (by primary key); when they changed, the target builds a
//! bucket from them and swaps it into the settings snapshot, so requests already
//! running finish on the old bucket and the next miss goes to the new one. Rows that
//! do not build are logged and counted once; the bucket in force stays.

use super::{LoopState, SyncService};
use crate::shimmie::SourceError;

impl SyncService {
    pub(super) async fn follow_origin(&self, st: &mut LoopState) -> Result<(), SourceError> {
        if !self.target.origin_from_shimmie() {
            // Off (or turned off by a reload): whatever is read next is new again.
            st.origin_installed = None;
            st.origin_rejected = None;
            return Ok(());
        }
        let rows = self.timed("reading config", self.source.read_s3()).await?;
        if st.origin_installed.as_ref() == Some(&rows) {
            if st.origin_rejected.take().is_some() {
                tracing::info!("sync: Shimmie's S3 settings are back to the ones in force");
                self.update(|s| s.origin_error = None);
            }
            return Ok(());
        }
        if st.origin_rejected.as_ref() == Some(&rows) {
            return Ok(());
        }
        let target = self.target.clone();
        let to_build = rows.clone();
        // Building resolves the endpoint's name: blocking, so off the async workers.
        let built = tokio::task::spawn_blocking(move || target.install_shimmie_origin(&to_build))
            .await
            .unwrap_or_else(|e| Err(format!("building the origin failed: {e}")));
        match built {
            Ok(described) => {
                tracing::info!("sync: origin from Shimmie's config: {described}");
                st.origin_installed = Some(rows);
                st.origin_rejected = None;
                self.update(|s| {
                    s.origin_installs += 1;
                    s.origin_error = None;
                });
            }
            Err(why) => {
                let keeps = if st.origin_installed.is_some() {
                    "the bucket in force stays"
                } else {
                    "no bucket yet: cache misses fail until they are fixed"
                };
                tracing::error!("sync: Shimmie's S3 settings refused, {keeps}: {why}");
                st.origin_rejected = Some(rows);
                self.update(|s| {
                    s.origin_errors += 1;
                    s.origin_error = Some(why);
                });
            }
        }
        Ok(())
    }
}
