//! Watches: the bounded history of recent key changes this node applied, and the long poll that
//! waits on it.
//!
//! The driver records every [`KeyChange`] as it applies an entry ([`WatchHub::record`]) and
//! then publishes its applied index ([`WatchHub::publish_applied`]); an HTTP handler asks for the
//! changes after an index ([`WatchHub::wait`]) and sleeps until there is one or its wait ends.
//!
//! Why any node, a follower included, may serve a watch: a watch promises the committed changes
//! to its keys after index N, each once, in index order. A node applies exactly the committed
//! entries, in log order, once each (the driver's apply loop; Raft §5.3 Log Matching makes every
//! node's entry at an index the same), so the changes it records after N are the committed
//! changes after N, in order, up to its applied index. A lagging follower only answers later; it
//! never answers differently. The answer's index tells the client where to resume, on this node
//! or any other: a node that has not applied that far yet waits, and a node whose history no
//! longer reaches back to it says so (410, [`Compacted`]) instead of skipping changes.
//!
//! Invariant: the history holds every change with an index in `(floor_index, applied_index]`,
//! in index order, and nothing else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::env;
use crate::kv::{ChangeKind, KeyChange};
use crate::plants::{self, Plant};

/// Default for [`WatchOptions::history_events_max`].
pub const WATCH_HISTORY_EVENTS_MAX_DEFAULT: usize = 10_000;
/// Default for [`WatchOptions::history_bytes_max`] (64 MiB).
pub const WATCH_HISTORY_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default for [`WatchOptions::watches_max`].
pub const WATCHES_MAX_DEFAULT: usize = 1024;
/// Most events one answer carries; the client continues from the last one's index.
pub const WATCH_EVENTS_PER_ANSWER_MAX: usize = 1000;
/// Most changes a stream takes from the history at a time: with [`WATCH_STREAM_QUEUE_LINES`],
/// what bounds the memory one slow stream reader can pin.
pub const WATCH_STREAM_BATCH_EVENTS_MAX: usize = 64;
/// Most rendered lines queued between a stream and its connection; a reader slower than the
/// changes makes the stream wait here (backpressure), never grow a queue.
pub const WATCH_STREAM_QUEUE_LINES: usize = 16;
/// How often an idle stream says where it stands (a progress line), so its reader knows the
/// index to resume from even when none of its keys changed.
pub const WATCH_STREAM_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Bytes an event costs in the history besides its key and value (index, kind, pointers).
const EVENT_OVERHEAD_BYTES: usize = 64;

/// Bounds of a node's watch history and of its waiting watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// Most changes kept; the oldest go first.
    pub history_events_max: usize,
    /// Most bytes of keys and values kept; the oldest changes go first.
    pub history_bytes_max: usize,
    /// Most watches waiting on this node at once.
    pub watches_max: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            history_events_max: WATCH_HISTORY_EVENTS_MAX_DEFAULT,
            history_bytes_max: WATCH_HISTORY_BYTES_MAX_DEFAULT,
            watches_max: WATCHES_MAX_DEFAULT,
        }
    }
}

/// Which keys a watch follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchSelector {
    /// One key.
    Key(Vec<u8>),
    /// Every key starting with this prefix (empty: every key).
    Prefix(Vec<u8>),
}

impl WatchSelector {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            WatchSelector::Key(wanted) => key == wanted.as_slice(),
            WatchSelector::Prefix(prefix) => key.starts_with(prefix),
        }
    }
}

/// The changes after an index, as one answer carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// Where the next call continues (`index=`): every matching change up to it is in
    /// `events` or was before the asked index. Never below the asked index.
    pub index: u64,
    /// The matching changes, in index order.
    pub events: Vec<KeyChange>,
}

/// The asked index is older than the history: changes after it may be gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("changes after index {asked_index} are no longer kept; the oldest index served is {oldest_index}")]
pub struct Compacted {
    /// The index the watch asked to continue from.
    pub asked_index: u64,
    /// The smallest index a watch can continue from now.
    pub oldest_index: u64,
}

/// One line of a watch stream, before the HTTP layer renders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamLine<'a> {
    /// A matching change.
    Event(&'a KeyChange),
    /// Every matching change up to this index has been sent: the index to resume from. The
    /// changes of one entry always come before the progress line that covers them.
    Progress(u64),
    /// The stream fell behind the history and ends here; the reader resumes (and gets 410 if
    /// its index is gone) or re-reads.
    Compacted(Compacted),
}

/// Why a watch was not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// See [`Compacted`].
    #[error(transparent)]
    Compacted(#[from] Compacted),
    /// [`WatchOptions::watches_max`] watches already wait on this node.
    #[error("{watches_max} watches already wait on this node")]
    TooManyWatches {
        /// The limit.
        watches_max: usize,
    },
}

#[derive(Debug)]
struct History {
    /// Invariant: indexes ascend, all in `(floor_index, applied_index]`.
    events: VecDeque<KeyChange>,
    /// Sum of [`event_bytes`] over `events`.
    bytes: usize,
    /// Changes at or below this index are no longer kept (evicted, or before this node's
    /// snapshot).
    floor_index: u64,
    applied_index: u64,
}

/// A node's watch history and its waiting watches (see the module docs). Shared by the driver,
/// which writes, and the HTTP handlers, which read.
#[derive(Debug)]
pub struct WatchHub {
    options: WatchOptions,
    history: Mutex<History>,
    /// Woken after each batch of applied entries: what wakes a watch. A `Notify`, not a
    /// `tokio::sync::watch` channel: the latter picks one of its internal notifiers with tokio's
    /// per-thread RNG, seeded from a process-wide counter, which made two runs of one simulated
    /// seed diverge.
    applied: Notify,
    /// The applied index last published.
    published_index: AtomicU64,
    watches_waiting: AtomicUsize,
}

impl WatchHub {
    /// A hub whose history starts at `applied_index` (a restored snapshot's index, or 0).
    pub fn new(options: WatchOptions, applied_index: u64) -> WatchHub {
        WatchHub {
            options,
            history: Mutex::new(History {
                events: VecDeque::new(),
                bytes: 0,
                floor_index: applied_index,
                applied_index,
            }),
            applied: Notify::new(),
            published_index: AtomicU64::new(applied_index),
            watches_waiting: AtomicUsize::new(0),
        }
    }

    /// Records the entry at `index` as applied, with the changes it made, evicting the oldest
    /// changes beyond the bounds. Watches wake at the next [`WatchHub::publish_applied`].
    ///
    /// # Panics
    /// If `index` is not above the last recorded index, or a change carries another index: the
    /// driver applies in log order, once.
    pub fn record(&self, index: u64, changes: Vec<KeyChange>) {
        let mut history = self.lock();
        assert!(
            index > history.applied_index,
            "watch history: recording index {index} at or below the applied index {}",
            history.applied_index
        );
        history.applied_index = index;
        for change in changes {
            assert_eq!(
                change.index, index,
                "watch history: a change of entry {index} carries index {}",
                change.index
            );
            history.bytes += event_bytes(&change);
            history.events.push_back(change);
        }
        while history.events.len() > self.options.history_events_max
            || history.bytes > self.options.history_bytes_max
        {
            let Some(oldest) = history.events.pop_front() else {
                break;
            };
            history.bytes -= event_bytes(&oldest);
            // The changes of one entry leave together, so the floor is an entry boundary.
            while history
                .events
                .front()
                .is_some_and(|next| next.index == oldest.index)
            {
                if let Some(sibling) = history.events.pop_front() {
                    history.bytes -= event_bytes(&sibling);
                }
            }
            history.floor_index = oldest.index;
        }
    }

    /// Replaces the history by an empty one starting at `index` (a snapshot installed from the
    /// leader: the changes it covers were never applied here one by one).
    pub fn reset(&self, index: u64) {
        let mut history = self.lock();
        history.events.clear();
        history.bytes = 0;
        history.floor_index = index;
        history.applied_index = index;
        drop(history);
        self.published_index.store(index, Ordering::Release);
        self.applied.notify_waiters();
    }

    /// Wakes the watches: the entries recorded so far are applied.
    pub fn publish_applied(&self) {
        let applied_index = self.lock().applied_index;
        if self.published_index.swap(applied_index, Ordering::AcqRel) != applied_index {
            self.applied.notify_waiters();
        }
    }

    /// The oldest index a watch can continue from and the applied index, for status.
    pub fn bounds(&self) -> (u64, u64) {
        let history = self.lock();
        (history.floor_index, history.applied_index)
    }

    /// The matching changes after `after_index`, at most [`WATCH_EVENTS_PER_ANSWER_MAX`],
    /// without waiting.
    pub fn changes_after(
        &self,
        after_index: u64,
        selector: &WatchSelector,
    ) -> Result<WatchBatch, Compacted> {
        self.changes_after_max(after_index, selector, WATCH_EVENTS_PER_ANSWER_MAX)
    }

    /// [`WatchHub::changes_after`] with at most about `events_max` changes (a full answer
    /// still ends on an entry boundary).
    fn changes_after_max(
        &self,
        after_index: u64,
        selector: &WatchSelector,
        events_max: usize,
    ) -> Result<WatchBatch, Compacted> {
        let history = self.lock();
        if after_index < history.floor_index {
            return Err(Compacted {
                asked_index: after_index,
                oldest_index: history.floor_index,
            });
        }
        // Events ascend by index: skip those at or below `after_index` by binary search.
        let start = if plants::active(Plant::WatchResumeRepeats) {
            // The planted off-by-one: the change at the asked index itself comes again.
            history
                .events
                .partition_point(|event| event.index < after_index)
        } else {
            history
                .events
                .partition_point(|event| event.index <= after_index)
        };
        let mut events: Vec<KeyChange> = Vec::new();
        let mut full = false;
        for event in history.events.range(start..) {
            // A full answer still takes the rest of its last entry's changes, so resuming
            // after that entry's index misses none.
            if events.len() >= events_max
                && events.last().is_some_and(|last| last.index != event.index)
            {
                full = true;
                break;
            }
            if selector.matches(&event.key) {
                events.push(event.clone());
            }
        }
        let index = match events.last() {
            Some(last) if full => last.index,
            _ => history.applied_index.max(after_index),
        };
        Ok(WatchBatch { index, events })
    }

    /// Waits up to `wait` for a matching change after `after_index` and returns the changes
    /// (an empty batch when none came in time). At most [`WatchOptions::watches_max`] wait at
    /// once.
    pub async fn wait(
        &self,
        after_index: u64,
        selector: &WatchSelector,
        wait: Duration,
    ) -> Result<WatchBatch, WatchError> {
        let batch = self.changes_after(after_index, selector)?;
        if !batch.events.is_empty() || wait.is_zero() {
            return Ok(batch);
        }
        let _slot = self.take_slot()?;
        let waited = env::timeout(wait, async {
            loop {
                // Registered before looking again, so a publish between the look and the wait
                // wakes us (`notify_waiters` wakes only registered waiters).
                let notified = self.applied.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let batch = self.changes_after(after_index, selector)?;
                if !batch.events.is_empty() {
                    return Ok::<_, Compacted>(batch);
                }
                notified.await;
            }
        })
        .await;
        match waited {
            Ok(answer) => answer.map_err(WatchError::from),
            Err(_) => Ok(self.changes_after(after_index, selector)?),
        }
    }

    /// A place for a stream among [`WatchOptions::watches_max`] (streams and long polls count
    /// alike), held until the stream ends.
    pub fn take_stream_slot(self: &Arc<Self>) -> Result<StreamSlot, WatchError> {
        self.count_slot()?;
        Ok(StreamSlot { hub: self.clone() })
    }

    /// Streams the matching changes after `after_index` into `sink` as rendered lines (see
    /// [`StreamLine`]) for `duration`, or until the reader leaves (`sink` closes) or falls
    /// behind the history (a last [`StreamLine::Compacted`]). A progress line follows every
    /// batch of changes, comes every [`WATCH_STREAM_PROGRESS_INTERVAL`] while idle, and ends a
    /// stream that ran its `duration`.
    ///
    /// Memory per stream is bounded whatever the reader's pace: at most
    /// [`WATCH_STREAM_BATCH_EVENTS_MAX`] changes taken from the history and
    /// [`WATCH_STREAM_QUEUE_LINES`] lines in `sink` (a full sink makes the stream wait).
    pub async fn stream<R>(
        &self,
        _slot: StreamSlot,
        mut after_index: u64,
        selector: &WatchSelector,
        duration: Duration,
        sink: &mpsc::Sender<Bytes>,
        render: R,
    ) where
        R: Fn(StreamLine<'_>) -> Bytes,
    {
        let deadline = env::now() + duration;
        // The first progress line goes out at once: the reader learns the stream is open and
        // where it stands.
        let mut progress_due = env::now();
        loop {
            // Registered before looking, so a publish between the look and the wait wakes us.
            let notified = self.applied.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let batch = match self.changes_after_max(
                after_index,
                selector,
                WATCH_STREAM_BATCH_EVENTS_MAX,
            ) {
                Ok(batch) => batch,
                Err(compacted) => {
                    let _ = sink.send(render(StreamLine::Compacted(compacted))).await;
                    return;
                }
            };
            for event in &batch.events {
                if sink.send(render(StreamLine::Event(event))).await.is_err() {
                    return;
                }
            }
            after_index = batch.index;
            let now = env::now();
            let ended = now >= deadline;
            if !batch.events.is_empty() || now >= progress_due || ended {
                if sink
                    .send(render(StreamLine::Progress(after_index)))
                    .await
                    .is_err()
                {
                    return;
                }
                progress_due = now + WATCH_STREAM_PROGRESS_INTERVAL;
            }
            if ended {
                return;
            }
            if batch.events.len() >= WATCH_STREAM_BATCH_EVENTS_MAX {
                continue; // maybe more right behind: look again before waiting
            }
            let wake_at = deadline.min(progress_due);
            tokio::select! {
                biased; // deterministic in simulation
                _ = sink.closed() => return,
                _ = notified => {}
                _ = env::sleep(wake_at.duration_since(now)) => {}
            }
        }
    }

    /// Number of watches waiting now.
    pub fn watches_waiting(&self) -> usize {
        self.watches_waiting.load(Ordering::Relaxed)
    }

    fn take_slot(&self) -> Result<WatchSlot<'_>, WatchError> {
        self.count_slot()?;
        Ok(WatchSlot { hub: self })
    }

    /// Counts one more watch, unless [`WatchOptions::watches_max`] already wait. The caller
    /// gives it back by dropping a [`WatchSlot`] or [`StreamSlot`].
    fn count_slot(&self) -> Result<(), WatchError> {
        let watches_max = self.options.watches_max;
        self.watches_waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < watches_max).then_some(waiting + 1)
            })
            .map_err(|_| WatchError::TooManyWatches { watches_max })?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One place among [`WatchOptions::watches_max`], given back when the watch ends.
struct WatchSlot<'a> {
    hub: &'a WatchHub,
}

impl Drop for WatchSlot<'_> {
    fn drop(&mut self) {
        self.hub.watches_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream's place among [`WatchOptions::watches_max`], given back when the stream ends.
#[derive(Debug)]
pub struct StreamSlot {
    hub: SharedWatchHub,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.hub.watches_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a change costs against [`WatchOptions::history_bytes_max`].
fn event_bytes(change: &KeyChange) -> usize {
    let value_bytes = match &change.kind {
        ChangeKind::Put { value, .. } => value.len(),
        ChangeKind::Delete => 0,
    };
    change.key.len() + value_bytes + EVENT_OVERHEAD_BYTES
}

/// A hub shared between the driver and the handlers.
pub type SharedWatchHub = Arc<WatchHub>;

#[cfg(test)]
mod tests;
