//! The last good settings and bans on local disk, so a mirror that starts while the
//! database is unreachable serves the view it last knew (and keeps refusing banned
//! images) instead of the YAML's static fallback.
//!
//! One file, replaced atomically (write a temporary file, fsync, rename): a JSON
//! header line, then the bans as 16-byte big-endian md5s, sorted.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const FORMAT: &str = "shimmer-sync-state";
const VERSION: u32 = 1;

/// What is persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub image_ilink: Option<String>,
    pub image_tlink: Option<String>,
    /// Sorted md5s.
    pub bans: Vec<u128>,
    /// Unix seconds when it was read from the database.
    pub saved_at: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    version: u32,
    image_ilink: Option<String>,
    image_tlink: Option<String>,
    bans: usize,
    saved_at: u64,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a shimmer sync state file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl Snapshot {
    pub fn now(
        image_ilink: Option<String>,
        image_tlink: Option<String>,
        bans: Vec<u128>,
    ) -> Snapshot {
        let saved_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Snapshot {
            image_ilink,
            image_tlink,
            bans,
            saved_at,
        }
    }
}

/// Writes `snapshot` to `path` atomically.
pub fn save(path: &Path, snapshot: &Snapshot) -> Result<(), PersistError> {
    let io_err = |source| PersistError::Io {
        path: path.to_owned(),
        source,
    };
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        image_ilink: snapshot.image_ilink.clone(),
        image_tlink: snapshot.image_tlink.clone(),
        bans: snapshot.bans.len(),
        saved_at: snapshot.saved_at,
    };
    let mut bytes = serde_json::to_vec(&header).map_err(|e| io_err(io::Error::other(e)))?;
    bytes.push(b'\n');
    bytes.reserve(snapshot.bans.len() * 16);
    for hash in &snapshot.bans {
        bytes.extend_from_slice(&hash.to_be_bytes());
    }

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is; not all filesystems allow it.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(e)
    })
}

/// Reads the snapshot at `path`; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> Result<Option<Snapshot>, PersistError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |reason: String| PersistError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header: Header =
        serde_json::from_slice(&bytes[..newline]).map_err(|e| corrupt(format!("header: {e}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(corrupt(format!(
            "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
            header.format, header.version
        )));
    }
    let body = &bytes[newline + 1..];
    if header.bans.checked_mul(16) != Some(body.len()) {
        return Err(corrupt(format!(
            "header says {} bans but {} bytes follow (truncated?)",
            header.bans,
            body.len()
        )));
    }
    let bans: Vec<u128> = body
        .chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            u128::from_be_bytes(b)
        })
        .collect();
    if !bans.windows(2).all(|w| w[0] < w[1]) {
        return Err(corrupt("bans are not sorted".into()));
    }
    Ok(Some(Snapshot {
        image_ilink: header.image_ilink,
        image_tlink: header.image_tlink,
        bans,
        saved_at: header.saved_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.state");
        assert!(load(&path).unwrap().is_none());
        let snap = Snapshot::now(
            Some("https://{a=5,b=5}.x/$hash".into()),
            None,
            vec![1, 2, u128::MAX],
        );
        save(&path, &snap).unwrap();
        assert_eq!(load(&path).unwrap(), Some(snap.clone()));
        let newer = Snapshot::now(None, Some("{t}".into()), Vec::new());
        save(&path, &newer).unwrap();
        assert_eq!(load(&path).unwrap(), Some(newer));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
    }

    #[test]
    fn refuses_truncated_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.state");
        save(&path, &Snapshot::now(None, None, vec![5, 6])).unwrap();
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 3]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        fs::write(&path, b"{\"hello\":1}\n").unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
        fs::write(&path, b"").unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
    }

    #[test]
    fn save_into_a_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/sync.state");
        assert!(matches!(
            save(&path, &Snapshot::default()),
            Err(PersistError::Io { .. })
        ));
    }
}
