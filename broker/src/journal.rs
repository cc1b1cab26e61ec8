//! The broker's journal: what makes a RECEIPT mean "kept". Every message sent to a named
//! queue (`/queue/…`) is appended here, with one `write(2)`, before the broker delivers
//! it or answers its RECEIPT; the kernel then has it, so it survives the process being
//! killed. With `fsync` it is also flushed to the disk first, which survives the machine:
//! a group commit, where one flush (off the broker's lock) covers every message written
//! while the one before was under way, and the broker holds back their delivery and
//! receipts until it is done.
//! Acks (and deleted queues) are appended as the lsns they settle. On start the journal
//! is read back, every message that was never settled is put back in its queue in its
//! place, and the file is rewritten with only those (compaction); it is compacted again
//! whenever it has grown to several times what it holds.
//!
//! The records are STOMP frames, read with the same parser as the wire: `SEND` with the
//! destination, the message's lsn (`x-lsn`, its place in the queue) and its headers and
//! body; `ACK` whose body lists settled lsns.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use stomp::{encode_parts, parse, Command, Frame, Limits, Parsed};

/// A message the journal holds that was never settled: what to put back on start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Its place in its queue; new messages are numbered after the largest.
    pub lsn: u64,
    /// The queue.
    pub destination: String,
    /// The sender's headers (with the broker's `user-id`).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// The open journal file.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    fsync: bool,
    /// Bytes in the file.
    written: u64,
    /// Bytes of the messages not yet settled, by lsn.
    live: BTreeMap<u64, u64>,
    /// The sum of `live`.
    live_bytes: u64,
    /// The highest lsn written.
    last_lsn: u64,
    buf: BytesMut,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("written", &self.written)
            .field("live", &self.live.len())
            .finish()
    }
}

/// A journal smaller than this is never compacted while the broker runs.
const COMPACT_FROM: u64 = 8 << 20;

impl Journal {
    /// Opens (or creates) the journal at `path`, reads back what it keeps, and rewrites
    /// it with only that. Returns the journal and the kept messages in lsn order.
    pub(super) fn open(path: &Path, fsync: bool) -> std::io::Result<(Journal, Vec<Kept>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let kept = match std::fs::read(path) {
            Ok(bytes) => read_back(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut journal = Journal {
            path: path.to_owned(),
            file: File::create(path.with_extension("new"))?,
            fsync,
            written: 0,
            live: BTreeMap::new(),
            live_bytes: 0,
            last_lsn: 0,
            buf: BytesMut::new(),
        };
        journal.rewrite(
            kept.iter()
                .map(|k| (k.lsn, &k.destination, &k.headers, &k.body)),
        )?;
        Ok((journal, kept))
    }

    /// Appends a message sent to `destination`; once this returns, it is kept.
    pub(super) fn publish(
        &mut self,
        lsn: u64,
        destination: &str,
        headers: &[(String, String)],
        body: &Bytes,
    ) -> std::io::Result<()> {
        self.buf.clear();
        encode_send(&mut self.buf, lsn, destination, headers, body);
        let len = self.buf.len() as u64;
        // With --fsync the flush is the group commit's (see `Journal::to_sync`): one for
        // every message written while the last was under way.
        self.append()?;
        self.last_lsn = self.last_lsn.max(lsn);
        self.live.insert(lsn, len);
        self.live_bytes += len;
        Ok(())
    }

    /// Appends that the messages `lsns` are settled (acked, or their queue deleted).
    /// Losing this record costs only a redelivery, which consumers skip by their own
    /// sequence numbers, so it is not flushed to the disk.
    pub(super) fn settle(&mut self, lsns: &[u64]) -> std::io::Result<()> {
        let mut settled = Vec::with_capacity(lsns.len());
        for &lsn in lsns {
            if let Some(len) = self.live.remove(&lsn) {
                self.live_bytes -= len;
                settled.push(lsn);
            }
        }
        let lsns = settled;
        if lsns.is_empty() {
            return Ok(());
        }
        let body = lsns
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        self.buf.clear();
        Frame::new(Command::Ack)
            .with_body(body)
            .encode(&mut self.buf);
        self.append()
    }

    /// Whether messages must wait for a flush to the disk before they count as kept.
    pub(super) fn group_commit(&self) -> bool {
        self.fsync
    }

    /// What a flush to the disk now would make durable: a handle on the file, and the
    /// last lsn written to it. Flushing the handle does not need the broker's lock.
    pub(super) fn to_sync(&self) -> std::io::Result<(File, u64)> {
        Ok((self.file.try_clone()?, self.last_lsn))
    }

    /// Whether the file has grown to several times what it holds, so that
    /// [`Journal::compact`] is worth its cost.
    pub(super) fn wants_compaction(&self) -> bool {
        self.written >= COMPACT_FROM && self.written >= 4 * self.live_bytes.max(1)
    }

    /// Rewrites the file with only `kept`: every message not yet settled.
    pub(super) fn compact<'a>(
        &mut self,
        kept: impl Iterator<Item = (u64, &'a String, &'a Vec<(String, String)>, &'a Bytes)>,
    ) -> std::io::Result<()> {
        self.file = File::create(self.path.with_extension("new"))?;
        self.rewrite(kept)
    }

    /// Writes `kept` to the `.new` file just created, makes it durable, and puts it in
    /// place of the journal.
    fn rewrite<'a>(
        &mut self,
        kept: impl Iterator<Item = (u64, &'a String, &'a Vec<(String, String)>, &'a Bytes)>,
    ) -> std::io::Result<()> {
        self.live.clear();
        let mut all = BytesMut::new();
        for (lsn, destination, headers, body) in kept {
            let before = all.len();
            encode_send(&mut all, lsn, destination, headers, body);
            self.live.insert(lsn, (all.len() - before) as u64);
            self.last_lsn = self.last_lsn.max(lsn);
        }
        self.live_bytes = all.len() as u64;
        self.file.write_all(&all)?;
        // What a process crash needs is in the page cache once written. Flushing to the
        // disk (a stall of the whole broker, which holds its lock) is for --fsync, which
        // promises to survive a machine crash.
        if self.fsync {
            self.file.sync_all()?;
        }
        std::fs::rename(self.path.with_extension("new"), &self.path)?;
        if self.fsync {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.written = all.len() as u64;
        Ok(())
    }

    fn append(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        Ok(())
    }
}

fn encode_send(
    buf: &mut BytesMut,
    lsn: u64,
    destination: &str,
    headers: &[(String, String)],
    body: &Bytes,
) {
    let mut lsn_digits = itoa::Buffer::new();
    let fixed = [
        ("destination", destination),
        ("x-lsn", lsn_digits.format(lsn)),
    ];
    let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    encode_parts(buf, Command::Send, fixed.into_iter().chain(headers), body);
}

/// The messages a journal's bytes keep, in lsn order. A record cut short at the end (the
/// process died while writing it, before any RECEIPT) is dropped, as is anything that is
/// not a record, with a warning.
fn read_back(bytes: &[u8], path: &Path) -> Vec<Kept> {
    let limits = Limits {
        max_frame_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_header_bytes: usize::MAX,
    };
    let mut kept: BTreeMap<u64, Kept> = BTreeMap::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match parse(rest, &limits) {
            Ok(Parsed::Frame(frame, len)) => {
                rest = &rest[len..];
                match frame.command {
                    Command::Send => {
                        let lsn = frame.header("x-lsn").and_then(|l| l.parse().ok());
                        let destination = frame.header("destination").map(str::to_owned);
                        let (Some(lsn), Some(destination)) = (lsn, destination) else {
                            tracing::warn!(
                                "{}: a SEND record without x-lsn or destination",
                                path.display()
                            );
                            continue;
                        };
                        let headers = frame
                            .headers
                            .into_iter()
                            .filter(|(n, _)| {
                                !matches!(n.as_str(), "destination" | "x-lsn" | "content-length")
                            })
                            .collect();
                        kept.insert(
                            lsn,
                            Kept {
                                lsn,
                                destination,
                                headers,
                                body: frame.body,
                            },
                        );
                    }
                    Command::Ack => {
                        for lsn in String::from_utf8_lossy(&frame.body)
                            .split_whitespace()
                            .filter_map(|l| l.parse::<u64>().ok())
                        {
                            kept.remove(&lsn);
                        }
                    }
                    other => tracing::warn!("{}: an unexpected {other} record", path.display()),
                }
            }
            Ok(Parsed::Heartbeat(len)) => rest = &rest[len..],
            Ok(Parsed::Incomplete) => {
                tracing::warn!(
                    "{}: the last {} bytes are a record cut short; dropped",
                    path.display(),
                    rest.len()
                );
                break;
            }
            Err(e) => {
                tracing::error!(
                    "{}: unreadable from byte {}: {e}; the rest is dropped",
                    path.display(),
                    bytes.len() - rest.len()
                );
                break;
            }
        }
    }
    kept.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("gsl-journal-{tag}-{nanos}/inbox.journal"))
    }

    fn headers(user: &str) -> Vec<(String, String)> {
        vec![("user-id".into(), user.into())]
    }

    #[test]
    fn what_was_never_settled_comes_back_in_order_and_the_file_shrinks() {
        let path = temp("replay");
        let (mut j, kept) = Journal::open(&path, false).unwrap();
        assert!(kept.is_empty());
        for lsn in 1..=5 {
            j.publish(
                lsn,
                "/queue/room.a",
                &headers("ann"),
                &Bytes::from(format!("in{lsn}")),
            )
            .unwrap();
        }
        j.publish(
            6,
            "/queue/room.b",
            &headers("bob"),
            &Bytes::from_static(b"\0binary\n"),
        )
        .unwrap();
        j.settle(&[1, 2, 4]).unwrap();
        j.settle(&[2, 99]).unwrap(); // settling twice, or what it never had, is no error
        let before = std::fs::metadata(&path).unwrap().len();
        drop(j); // as if killed: nothing more is written

        let (j, kept) = Journal::open(&path, true).unwrap();
        let lsns: Vec<u64> = kept.iter().map(|k| k.lsn).collect();
        assert_eq!(lsns, [3, 5, 6]);
        assert_eq!(kept[0].body, "in3");
        assert_eq!(kept[0].headers, headers("ann"));
        assert_eq!(kept[2].destination, "/queue/room.b");
        assert_eq!(kept[2].body, Bytes::from_static(b"\0binary\n"));
        assert!(
            std::fs::metadata(&path).unwrap().len() < before,
            "compacted on open"
        );
        assert!(!j.wants_compaction());
    }

    #[test]
    fn a_record_cut_short_is_dropped_and_the_rest_kept() {
        let path = temp("torn");
        let (mut j, _) = Journal::open(&path, false).unwrap();
        j.publish(1, "/queue/q", &[], &Bytes::from_static(b"whole"))
            .unwrap();
        j.publish(2, "/queue/q", &[], &Bytes::from_static(b"torn"))
            .unwrap();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let (_, kept) = Journal::open(&path, false).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].body, "whole");
    }
}
