use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;

fn put(index: u64, key: &str, value: &str) -> KeyChange {
    KeyChange {
        index,
        key: Bytes::copy_from_slice(key.as_bytes()),
        kind: ChangeKind::Put {
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_index: index,
        },
    }
}

fn delete(index: u64, key: &str) -> KeyChange {
    KeyChange {
        index,
        key: Bytes::copy_from_slice(key.as_bytes()),
        kind: ChangeKind::Delete,
    }
}

fn hub(history_events_max: usize) -> WatchHub {
    WatchHub::new(
        WatchOptions {
            history_events_max,
            history_bytes_max: usize::MAX,
            watches_max: 2,
        },
        0,
    )
}

fn indexes(batch: &WatchBatch) -> Vec<u64> {
    batch.events.iter().map(|event| event.index).collect()
}

#[test]
fn a_key_watch_sees_only_its_key_after_the_asked_index_and_resumes_without_gaps_or_repeats() {
    let hub = hub(100);
    hub.record(1, vec![put(1, "a", "1")]);
    hub.record(2, vec![put(2, "b", "1")]);
    hub.record(3, Vec::new()); // a no-op entry
    hub.record(4, vec![delete(4, "a")]);
    let key_a = WatchSelector::Key(b"a".to_vec());
    let first = hub.changes_after(0, &key_a).expect("in history");
    assert_eq!(first.events, vec![put(1, "a", "1"), delete(4, "a")]);
    assert_eq!(first.index, 4);
    let second = hub.changes_after(first.index, &key_a).expect("in history");
    assert_eq!(
        second,
        WatchBatch {
            index: 4,
            events: Vec::new()
        }
    );
    hub.record(5, vec![put(5, "a", "2")]);
    let third = hub.changes_after(second.index, &key_a).expect("in history");
    assert_eq!(indexes(&third), vec![5]);
}

#[test]
fn a_prefix_watch_sees_every_key_under_the_prefix_and_an_empty_prefix_sees_all() {
    let hub = hub(100);
    hub.record(1, vec![put(1, "app/x", "1")]);
    hub.record(2, vec![put(2, "apple", "1")]);
    hub.record(3, vec![put(3, "app/y", "1")]);
    let app = hub
        .changes_after(0, &WatchSelector::Prefix(b"app/".to_vec()))
        .expect("in history");
    assert_eq!(indexes(&app), vec![1, 3]);
    let all = hub
        .changes_after(1, &WatchSelector::Prefix(Vec::new()))
        .expect("in history");
    assert_eq!(indexes(&all), vec![2, 3]);
}

#[test]
fn an_index_older_than_the_history_is_compacted_with_the_oldest_index_still_served() {
    let hub = hub(2);
    for index in 1..=5 {
        hub.record(index, vec![put(index, "k", "v")]);
    }
    // Kept: the changes at 4 and 5; the one at 3 was evicted, so the floor is 3.
    let all = WatchSelector::Prefix(Vec::new());
    assert_eq!(
        hub.changes_after(2, &all),
        Err(Compacted {
            asked_index: 2,
            oldest_index: 3
        })
    );
    let from_floor = hub.changes_after(3, &all).expect("the floor is served");
    assert_eq!(indexes(&from_floor), vec![4, 5]);
}

#[test]
fn the_byte_bound_evicts_the_oldest_changes() {
    let hub = WatchHub::new(
        WatchOptions {
            history_events_max: usize::MAX,
            history_bytes_max: 3 * (EVENT_OVERHEAD_BYTES + 2),
            watches_max: 1,
        },
        0,
    );
    for index in 1..=5 {
        hub.record(index, vec![put(index, "k", "v")]);
    }
    assert_eq!(hub.bounds(), (2, 5));
    let kept = hub
        .changes_after(2, &WatchSelector::Key(b"k".to_vec()))
        .expect("in history");
    assert_eq!(indexes(&kept), vec![3, 4, 5]);
}

#[test]
fn a_full_answer_ends_at_an_entry_boundary_so_the_next_call_misses_nothing() {
    let hub = hub(usize::MAX);
    let entries = WATCH_EVENTS_PER_ANSWER_MAX as u64 + 10;
    for index in 1..=entries {
        // Two changes per entry: a full answer must not split them.
        hub.record(index, vec![put(index, "a", "v"), put(index, "b", "v")]);
    }
    let all = WatchSelector::Prefix(Vec::new());
    let first = hub.changes_after(0, &all).expect("in history");
    assert_eq!(first.events.len(), WATCH_EVENTS_PER_ANSWER_MAX);
    assert_eq!(first.index, WATCH_EVENTS_PER_ANSWER_MAX as u64 / 2);
    let mut seen = indexes(&first);
    let mut index = first.index;
    let mut calls = 1;
    while index < entries {
        let next = hub.changes_after(index, &all).expect("in history");
        assert!(next.index > index, "no progress at {index}");
        seen.extend(indexes(&next));
        index = next.index;
        calls += 1;
    }
    assert_eq!(calls, 3, "2,020 changes in answers of 1,000");
    let expected: Vec<u64> = (1..=entries).flat_map(|index| [index, index]).collect();
    assert!(
        seen == expected,
        "changes missed or repeated across full answers"
    );
}

#[test]
fn a_reset_history_starts_at_the_snapshot_index() {
    let hub = hub(100);
    hub.record(1, vec![put(1, "k", "v")]);
    hub.reset(10);
    let key = WatchSelector::Key(b"k".to_vec());
    assert_eq!(
        hub.changes_after(1, &key),
        Err(Compacted {
            asked_index: 1,
            oldest_index: 10
        })
    );
    hub.record(11, vec![delete(11, "k")]);
    assert_eq!(
        indexes(&hub.changes_after(10, &key).expect("in history")),
        vec![11]
    );
}

#[test]
fn an_answer_never_moves_the_client_back_below_its_index() {
    // A client that resumes on a node that has not applied as far yet.
    let hub = hub(100);
    hub.record(1, vec![put(1, "k", "v")]);
    let batch = hub
        .changes_after(7, &WatchSelector::Key(b"k".to_vec()))
        .expect("in history");
    assert_eq!(
        batch,
        WatchBatch {
            index: 7,
            events: Vec::new()
        }
    );
}

#[test]
fn watches_beyond_the_limit_are_refused_until_one_ends() {
    let hub = hub(100);
    let first = hub.take_slot().expect("1 of 2");
    let _second = hub.take_slot().expect("2 of 2");
    assert_eq!(
        hub.take_slot().err(),
        Some(WatchError::TooManyWatches { watches_max: 2 })
    );
    drop(first);
    assert_eq!(hub.watches_waiting(), 1);
    hub.take_slot().expect("a slot came free");
}

#[test]
#[should_panic(expected = "recording index 2 at or below the applied index 2")]
fn recording_an_index_twice_stops_the_node() {
    let hub = hub(100);
    hub.record(2, Vec::new());
    hub.record(2, Vec::new());
}

/// Renders stream lines as short text for the tests: `put 3 a=1`, `progress 3`, `compacted 5`.
fn test_line(line: StreamLine<'_>) -> Bytes {
    let text = match line {
        StreamLine::Event(change) => match &change.kind {
            ChangeKind::Put { value, .. } => format!(
                "put {} {}={}",
                change.index,
                String::from_utf8_lossy(&change.key),
                String::from_utf8_lossy(value)
            ),
            ChangeKind::Delete => format!(
                "delete {} {}",
                change.index,
                String::from_utf8_lossy(&change.key)
            ),
        },
        StreamLine::Progress(index) => format!("progress {index}"),
        StreamLine::Compacted(compacted) => format!("compacted {}", compacted.oldest_index),
    };
    Bytes::from(text)
}

async fn next_line(lines: &mut mpsc::Receiver<Bytes>) -> Option<String> {
    let line = lines.recv().await?;
    Some(String::from_utf8(line.to_vec()).expect("test lines are text"))
}

/// Runs `hub.stream` in a task from `after_index` over `selector` for `duration`, with a queue
/// of `queue_lines`: the task and the receiving end.
fn spawn_stream(
    hub: &Arc<WatchHub>,
    selector: WatchSelector,
    duration: Duration,
    queue_lines: usize,
) -> (crate::env::JoinHandle<()>, mpsc::Receiver<Bytes>) {
    let slot = hub.take_stream_slot().expect("a free slot");
    let (sink, lines) = mpsc::channel(queue_lines);
    let streamer = hub.clone();
    let task = crate::env::spawn(async move {
        streamer
            .stream(slot, 0, &selector, duration, &sink, test_line)
            .await;
    });
    (task, lines)
}

#[test]
fn a_stream_sends_changes_in_order_each_batch_followed_by_progress_and_ends_at_its_duration() {
    crate::env::testing::run_with_dir(|_| async {
        let hub = Arc::new(hub(100));
        hub.record(1, vec![put(1, "a", "1")]);
        hub.record(2, vec![put(2, "b", "1")]);
        let (stream, mut lines) = spawn_stream(
            &hub,
            WatchSelector::Key(b"a".to_vec()),
            Duration::from_secs(6),
            WATCH_STREAM_QUEUE_LINES,
        );
        assert_eq!(hub.watches_waiting(), 1, "a stream counts as a watch");
        // The history first, then where it stands.
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("put 1 a=1"));
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("progress 2"));
        // A change to another key wakes no line; a change to `a` comes with its progress,
        // both changes of one entry before the progress that covers them.
        hub.record(3, vec![put(3, "b", "2")]);
        hub.publish_applied();
        hub.record(4, vec![put(4, "a", "2"), delete(4, "a")]);
        hub.publish_applied();
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("put 4 a=2"));
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("delete 4 a"));
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("progress 4"));
        // Idle: a progress line every interval, then a last one when the duration ends.
        let idle_started = crate::env::now();
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("progress 4"));
        assert!(
            crate::env::now().duration_since(idle_started) >= WATCH_STREAM_PROGRESS_INTERVAL / 2,
            "an idle progress line came too soon"
        );
        let mut rest = Vec::new();
        while let Some(line) = next_line(&mut lines).await {
            rest.push(line);
        }
        assert!(
            !rest.is_empty() && rest.iter().all(|line| line == "progress 4"),
            "{rest:?}"
        );
        stream.await.expect("the stream task ends");
        assert_eq!(hub.watches_waiting(), 0, "the slot is given back");
    });
}

#[test]
fn a_stream_whose_reader_falls_behind_the_history_ends_with_compacted_and_never_queues_more() {
    crate::env::testing::run_with_dir(|_| async {
        let hub = Arc::new(hub(3));
        let (stream, mut lines) = spawn_stream(
            &hub,
            WatchSelector::Prefix(Vec::new()),
            Duration::from_secs(60),
            1,
        );
        assert_eq!(next_line(&mut lines).await.as_deref(), Some("progress 0"));
        // The reader stops reading while 10 changes go through a history of 3.
        for index in 1..=10 {
            hub.record(index, vec![put(index, "k", &index.to_string())]);
            hub.publish_applied();
            crate::env::sleep(Duration::from_millis(10)).await;
        }
        // The stream could queue one line and hold one; what it sends after them cannot be
        // the changes the history dropped: it ends with compacted.
        let mut seen = Vec::new();
        while let Some(line) = next_line(&mut lines).await {
            seen.push(line);
        }
        assert_eq!(
            seen.last().map(String::as_str),
            Some("compacted 7"),
            "{seen:?}"
        );
        assert!(
            seen.len() <= 4,
            "the stream queued more than it may: {seen:?}"
        );
        stream.await.expect("the stream task ends");
        assert_eq!(hub.watches_waiting(), 0);
    });
}

#[test]
fn a_stream_ends_when_its_reader_leaves_and_gives_its_slot_back() {
    crate::env::testing::run_with_dir(|_| async {
        let hub = Arc::new(hub(100));
        let (stream, lines) = spawn_stream(
            &hub,
            WatchSelector::Prefix(Vec::new()),
            Duration::from_secs(600),
            WATCH_STREAM_QUEUE_LINES,
        );
        let _other = hub.take_stream_slot().expect("2 of 2");
        assert!(matches!(
            hub.take_stream_slot(),
            Err(WatchError::TooManyWatches { watches_max: 2 })
        ));
        crate::env::sleep(Duration::from_millis(100)).await;
        drop(lines);
        crate::env::timeout(Duration::from_secs(1), stream)
            .await
            .expect("the stream notices its reader left before its duration or a progress line")
            .expect("the stream task ends");
        assert_eq!(hub.watches_waiting(), 1);
    });
}
