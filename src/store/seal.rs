//! The seal: a small file beside the sled database (`herald.seal`) that witnesses what sled
//! must still hold.
//!
//! Every batch the writer applies carries an increasing sequence number, stored in the same
//! atomic sled batch. After a flush has made batches durable, the writer records that sequence
//! number in the seal (written to a temporary file, fsynced, renamed). On a clean shutdown the
//! seal is also marked `clean`.
//!
//! At startup, sled holding an older sequence number than the seal means sled lost writes that
//! were already durable, and possibly acknowledged and delivered: a torn or damaged data file
//! from which sled recovered only a prefix. Serving it would reuse `(epoch, offset)` pairs, so
//! the store is refused. A seal that is not `clean` tells that the last run did not shut down
//! cleanly, which matters in `os` durability (see `writer`). A seal with `failed=N` tells that
//! batch N could not be written (its callers got an error) and the store stopped there: the
//! next start undoes batch N if sled holds it (see `writer::undo_batch`).

use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "herald.seal";
const HEADER: &str = "herald-seal 1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealState {
    /// Highest batch sequence number known durable in sled.
    pub seq: u64,
    /// Written by a clean shutdown.
    pub clean: bool,
    /// The sequence number of a batch whose writing failed (its callers were answered with an
    /// error) after which the store stopped: the next start undoes it if sled holds it.
    pub failed: Option<u64>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the seal; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<SealState>, String> {
    let text = match std::fs::read_to_string(path(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path(dir).display())),
    };
    let mut lines = text.lines();
    let malformed = || format!("{}: malformed seal file", path(dir).display());
    if lines.next() != Some(HEADER) {
        return Err(malformed());
    }
    let mut seq = None;
    let mut clean = None;
    let mut failed = None;
    for line in lines {
        match line.split_once('=') {
            Some(("seq", v)) => seq = v.parse().ok(),
            Some(("clean", v)) => clean = v.parse().ok(),
            Some(("failed", v)) => failed = Some(v.parse().map_err(|_| malformed())?),
            _ => return Err(malformed()),
        }
    }
    match (seq, clean) {
        (Some(seq), Some(clean)) => Ok(Some(SealState { seq, clean, failed })),
        _ => Err(malformed()),
    }
}

/// Replaces the seal atomically and durably.
pub fn write(dir: &Path, state: SealState) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        write!(file, "{HEADER}\nseq={}\nclean={}\n", state.seq, state.clean)?;
        if let Some(batch) = state.failed {
            writeln!(file, "failed={batch}")?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let state = SealState {
            seq: 42,
            clean: true,
            failed: None,
        };
        write(dir.path(), state).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(state)));
        let failed = SealState {
            seq: 42,
            clean: false,
            failed: Some(44),
        };
        write(dir.path(), failed).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(failed)));
        std::fs::write(path(dir.path()), "garbage").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("herald.seal"));
    }
}
