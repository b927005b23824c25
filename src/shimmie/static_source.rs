//! The static source: the two templates from the YAML, no bans, nothing to poll.
//! For deployments where the mirror has no access to Shimmie's database.

use async_trait::async_trait;

use super::{BanBatch, ShimmieSettings, Source, SourceError};
use crate::fleet::FleetSpec;

#[derive(Clone, Debug, Default)]
pub struct StaticSource {
    settings: ShimmieSettings,
}

impl StaticSource {
    pub fn new(image_ilink: Option<String>, image_tlink: Option<String>) -> StaticSource {
        StaticSource {
            settings: ShimmieSettings {
                image_ilink,
                image_tlink,
            },
        }
    }

    /// The templates of a spec (its algorithm is the sync target's business).
    pub fn from_spec(spec: &FleetSpec) -> StaticSource {
        StaticSource::new(spec.image_ilink.clone(), spec.image_tlink.clone())
    }
}

#[async_trait]
impl Source for StaticSource {
    fn engine(&self) -> &'static str {
        "static"
    }

    async fn read_settings(&self) -> Result<ShimmieSettings, SourceError> {
        Ok(self.settings.clone())
    }

    async fn bans_after(&self, _after_id: i64, _limit: usize) -> Result<BanBatch, SourceError> {
        Ok(BanBatch::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shimmie::Change;
    use std::time::Duration;

    #[tokio::test]
    async fn static_source_answers_its_templates_and_no_bans() {
        let s = StaticSource::new(Some("https://{a,b}.x/_images/$hash".into()), None);
        let settings = s.read_settings().await.unwrap_or_default();
        assert_eq!(
            settings.image_ilink.as_deref(),
            Some("https://{a,b}.x/_images/$hash")
        );
        assert_eq!(settings.image_tlink, None);
        assert_eq!(s.all_bans(10).await.map(|b| b.read).ok(), Some(0));
        let change = s.wait_for_change(Duration::from_millis(5)).await.ok();
        assert_eq!(change, Some(Change::Timeout));
        assert_eq!(s.engine(), "static");
    }
}
