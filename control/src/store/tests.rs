//! Tests of the store contract on the embedded SQLite store, each on a database of its own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tempfile::TempDir;

use super::{KeyValue, SqliteStore, Store, StoreError, WatchEvent, WatchStream};

/// Bound on waiting for an event that must arrive, so a bug fails the test instead of hanging it.
const EVENT_WAIT: Duration = Duration::from_secs(60);

fn open_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("store.db")).expect("open store");
    (dir, store)
}

/// Reads events until one at `last` (inclusive) arrives.
async fn events_until(stream: &mut WatchStream, last: i64) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(EVENT_WAIT, stream.next())
            .await
            .expect("watch event in time")
            .expect("watch stream open")
            .expect("watch event");
        let revision = event.revision();
        events.push(event);
        if revision >= last {
            return events;
        }
    }
}

fn revisions(events: &[WatchEvent]) -> Vec<i64> {
    events.iter().map(WatchEvent::revision).collect()
}

fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put { kv, .. } => &kv.key,
        WatchEvent::Delete { prev, .. } => &prev.key,
    }
}

#[tokio::test]
async fn create_get_update_delete_follow_cas_rules() {
    let (_dir, store) = open_store();
    assert_eq!(store.get("/a").await.expect("get"), None);

    let r1 = store.create("/a", b"one".to_vec()).await.expect("create");
    assert_eq!(r1, 1);
    assert!(matches!(
        store.create("/a", b"again".to_vec()).await,
        Err(StoreError::AlreadyExists(k)) if k == "/a"
    ));
    assert_eq!(
        store.get("/a").await.expect("get"),
        Some(KeyValue {
            key: "/a".into(),
            value: b"one".to_vec(),
            create_revision: 1,
            mod_revision: 1
        })
    );

    let r2 = store
        .update("/a", b"two".to_vec(), r1)
        .await
        .expect("update");
    assert_eq!(r2, 2);
    // A writer still holding revision 1 loses the compare-and-swap.
    assert!(matches!(
        store.update("/a", b"stale".to_vec(), r1).await,
        Err(StoreError::Conflict {
            expected: 1,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        store.update("/missing", b"x".to_vec(), 1).await,
        Err(StoreError::NotFound(_))
    ));
    let kv = store.get("/a").await.expect("get").expect("present");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"two"[..], 1, 2)
    );

    assert!(matches!(
        store.delete("/a", Some(r1)).await,
        Err(StoreError::Conflict {
            expected: 1,
            found: 2,
            ..
        })
    ));
    let (prev, r3) = store.delete("/a", Some(r2)).await.expect("delete");
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, r3),
        (&b"two"[..], 2, 3)
    );
    assert_eq!(store.get("/a").await.expect("get"), None);
    assert!(matches!(
        store.delete("/a", None).await,
        Err(StoreError::NotFound(_))
    ));

    // A re-created key starts a new life with its own create revision; empty values are values.
    let r4 = store.create("/a", Vec::new()).await.expect("re-create");
    let kv = store.get("/a").await.expect("get").expect("present");
    assert_eq!(
        (kv.value.len(), kv.create_revision, kv.mod_revision),
        (0, r4, r4)
    );
    let (_, r5) = store
        .delete("/a", None)
        .await
        .expect("unconditional delete");
    assert_eq!((r4, r5), (4, 5));
}

#[tokio::test]
async fn failed_writes_do_not_consume_revisions() {
    let (_dir, store) = open_store();
    let mut last = store.current_revision().await.expect("revision");
    assert_eq!(last, 0);
    for i in 0..20 {
        let key = format!("/k/{}", i % 5);
        let outcome = match store.get(&key).await.expect("get") {
            None => store.create(&key, vec![1]).await,
            Some(kv) if i % 3 == 0 => store.update(&key, vec![2], kv.mod_revision - 1).await,
            Some(kv) => store.update(&key, vec![3], kv.mod_revision).await,
        };
        match outcome {
            Ok(revision) => {
                assert_eq!(revision, last + 1, "each write moves the revision by one");
                last = revision;
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
        assert_eq!(store.current_revision().await.expect("revision"), last);
    }
    assert!(last > 5);
}

#[tokio::test]
async fn list_pages_in_key_order_with_limit_and_continue() {
    let (_dir, store) = open_store();
    // Inserted out of order, with neighbours of the prefix that must not show up.
    for key in [
        "/r/a/3", "/r/a", "/r/a/1", "/r/a0", "/r/a/5", "/r/a/2", "/r/b/1", "/r/a/4",
    ] {
        store
            .create(key, key.as_bytes().to_vec())
            .await
            .expect("create");
    }
    let full = store.list("/r/a/", None, 0).await.expect("list");
    let keys: Vec<_> = full.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/r/a/1", "/r/a/2", "/r/a/3", "/r/a/4", "/r/a/5"]);
    assert_eq!(full.revision, 8);
    assert!(!full.more);
    assert!(full.items.iter().all(|kv| kv.value == kv.key.as_bytes()));

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list("/r/a/", after.as_deref(), 2)
            .await
            .expect("page");
        assert!(page.items.len() <= 2);
        assert_eq!(page.revision, 8);
        paged.extend(page.items.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = page.items.last().map(|kv| kv.key.clone());
    }
    assert_eq!(paged, keys);

    // Exactly `limit` keys left: no `more`.
    let tail = store.list("/r/a/", Some("/r/a/3"), 2).await.expect("tail");
    assert_eq!(tail.items.len(), 2);
    assert!(!tail.more);
    assert_eq!(
        store.list("/r/", None, 0).await.expect("all").items.len(),
        8
    );
    assert!(
        store
            .list("/none/", None, 3)
            .await
            .expect("empty")
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn list_at_an_older_revision_shows_that_state() {
    let (_dir, store) = open_store();
    let a1 = store.create("/p/a", b"a1".to_vec()).await.expect("create");
    store.create("/p/b", b"b1".to_vec()).await.expect("create");
    store.create("/p/d", b"d1".to_vec()).await.expect("create");
    let then = store.current_revision().await.expect("revision");
    store
        .update("/p/a", b"a2".to_vec(), a1)
        .await
        .expect("update");
    store.delete("/p/b", None).await.expect("delete");
    store.create("/p/c", b"c1".to_vec()).await.expect("create");

    let old = store.list_at("/p/", None, 0, then).await.expect("list at");
    let got: Vec<_> = old
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        [
            ("/p/a", &b"a1"[..], 1),
            ("/p/b", &b"b1"[..], 2),
            ("/p/d", &b"d1"[..], 3)
        ]
    );
    assert_eq!(old.revision, then);

    let first = store.list_at("/p/", None, 2, then).await.expect("page");
    assert!(first.more);
    let second = store
        .list_at("/p/", Some("/p/b"), 2, then)
        .await
        .expect("page");
    assert_eq!(
        second
            .items
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/p/d"]
    );
    assert!(!second.more);

    let now = store.current_revision().await.expect("revision");
    let current = store
        .list_at("/p/", None, 0, now)
        .await
        .expect("list at now");
    let keys: Vec<_> = current.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/c", "/p/d"]);

    assert!(matches!(
        store.list_at("/p/", None, 0, now + 1).await,
        Err(StoreError::FutureRevision { .. })
    ));
    store.compact(then + 1).await.expect("compact");
    assert!(matches!(
        store.list_at("/p/", None, 0, then).await,
        Err(StoreError::Compacted { .. })
    ));
    assert_eq!(
        store
            .list_at("/p/", None, 0, then + 1)
            .await
            .expect("at compacted")
            .items
            .len(),
        3
    );
}

#[tokio::test]
async fn watch_replays_history_then_streams_live() {
    let (_dir, store) = open_store();
    let a = store.create("/w/a", b"1".to_vec()).await.expect("create");
    store.create("/other", b"x".to_vec()).await.expect("create");
    let a2 = store
        .update("/w/a", b"2".to_vec(), a)
        .await
        .expect("update");

    let mut watch = store.watch("/w/", 0).await.expect("watch");
    let replayed = events_until(&mut watch, a2).await;
    assert_eq!(
        replayed,
        [
            WatchEvent::Put {
                kv: KeyValue {
                    key: "/w/a".into(),
                    value: b"1".to_vec(),
                    create_revision: 1,
                    mod_revision: 1
                },
                prev: None
            },
            WatchEvent::Put {
                kv: KeyValue {
                    key: "/w/a".into(),
                    value: b"2".to_vec(),
                    create_revision: 1,
                    mod_revision: 3
                },
                prev: Some(KeyValue {
                    key: "/w/a".into(),
                    value: b"1".to_vec(),
                    create_revision: 1,
                    mod_revision: 1
                })
            },
        ]
    );

    store
        .create("/other2", b"y".to_vec())
        .await
        .expect("create");
    let (_, deleted) = store.delete("/w/a", None).await.expect("delete");
    let live = events_until(&mut watch, deleted).await;
    assert_eq!(
        live,
        [WatchEvent::Delete {
            prev: KeyValue {
                key: "/w/a".into(),
                value: b"2".to_vec(),
                create_revision: 1,
                mod_revision: 3
            },
            revision: 5
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_has_no_gaps_or_duplicates_under_concurrent_writers() {
    let (_dir, store) = open_store();
    const WRITERS: usize = 4;
    const KEYS: usize = 60;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                // Revisions of this writer's changes under /w/.
                let mut mine = Vec::new();
                for k in 0..KEYS {
                    let key = format!("/w/{w}/{k}");
                    let created = store.create(&key, vec![1]).await.expect("create");
                    mine.push(created);
                    let updated = store.update(&key, vec![2], created).await.expect("update");
                    mine.push(updated);
                    store
                        .create(&format!("/x/{w}/{k}"), vec![0])
                        .await
                        .expect("create");
                    if k % 4 == 0 {
                        let (_, deleted) = store.delete(&key, Some(updated)).await.expect("delete");
                        mine.push(deleted);
                    }
                }
                mine
            })
        })
        .collect();

    let total = (WRITERS * KEYS * 3 + WRITERS * KEYS.div_ceil(4)) as i64;

    // Watches opened while the writers run, from a revision a little behind the current one:
    // part of what they see is replayed from the log, part arrives live.
    let mut watches = Vec::new();
    for quarter in 1..=3 {
        let now = tokio::time::timeout(EVENT_WAIT, async {
            loop {
                let now = store.current_revision().await.expect("revision");
                if now >= total * quarter / 4 {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("writers progress");
        let after = now - 10;
        watches.push((after, store.watch("/w/", after).await.expect("watch")));
    }
    let mut written = BTreeSet::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    assert_eq!(store.current_revision().await.expect("revision"), total);

    // A watch opened after the fact replays everything from the log: the reference.
    let mut full = store.watch("/w/", 0).await.expect("watch");
    let last_w = *written.last().expect("writes");
    let reference = events_until(&mut full, last_w).await;
    assert_eq!(
        revisions(&reference),
        written.iter().copied().collect::<Vec<_>>()
    );
    assert!(reference.iter().all(|e| event_key(e).starts_with("/w/")));

    for (after, mut watch) in watches {
        let expected: Vec<_> = reference
            .iter()
            .filter(|e| e.revision() > after)
            .cloned()
            .collect();
        let got = if expected.is_empty() {
            Vec::new()
        } else {
            events_until(&mut watch, last_w).await
        };
        assert_eq!(got, expected, "watch from {after}");
    }
}

#[tokio::test]
async fn lagging_watcher_catches_up_from_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Room for two batches only: a watcher that does not read falls behind at once.
    let store = SqliteStore::open_with_event_buffer(&dir.path().join("store.db"), 2).expect("open");
    let mut watch = store.watch("/", 0).await.expect("watch");
    for i in 0..50 {
        store
            .create(&format!("/k/{i:02}"), vec![i])
            .await
            .expect("create");
    }
    let events = events_until(&mut watch, 50).await;
    assert_eq!(revisions(&events), (1..=50).collect::<Vec<_>>());
    // And it goes on live afterwards.
    store.create("/k/last", Vec::new()).await.expect("create");
    assert_eq!(revisions(&events_until(&mut watch, 51).await), [51]);
}

#[tokio::test]
async fn lagging_watcher_overtaken_by_compaction_ends_with_compacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open_with_event_buffer(&dir.path().join("store.db"), 1).expect("open");
    let mut watch = store.watch("/", 0).await.expect("watch");
    for i in 0..50 {
        store
            .create(&format!("/k/{i:02}"), Vec::new())
            .await
            .expect("create");
    }
    store.compact(40).await.expect("compact");
    // The watcher missed batches and the log no longer holds them.
    let first = tokio::time::timeout(EVENT_WAIT, watch.next())
        .await
        .expect("in time");
    assert!(matches!(
        first,
        Some(Err(StoreError::Compacted {
            requested: 0,
            compacted: 40
        }))
    ));
    let end = tokio::time::timeout(EVENT_WAIT, watch.next())
        .await
        .expect("in time");
    assert!(end.is_none());
}

#[tokio::test]
async fn watch_from_compacted_revision_is_compacted() {
    let (_dir, store) = open_store();
    for i in 0..10 {
        store
            .create(&format!("/c/{i}"), vec![i])
            .await
            .expect("create");
    }
    store.compact(5).await.expect("compact");
    assert_eq!(store.compacted_revision(), 5);
    assert!(matches!(
        store.watch("/c/", 4).await,
        Err(StoreError::Compacted {
            requested: 4,
            compacted: 5
        })
    ));
    // From the compacted revision on, history is whole.
    let mut watch = store.watch("/c/", 5).await.expect("watch");
    assert_eq!(
        revisions(&events_until(&mut watch, 10).await),
        [6, 7, 8, 9, 10]
    );

    assert!(matches!(
        store.compact(5).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.compact(11).await,
        Err(StoreError::FutureRevision {
            requested: 11,
            current: 10
        })
    ));
    // Compaction keeps current values and does not move the revision.
    assert_eq!(
        store.list("/c/", None, 0).await.expect("list").items.len(),
        10
    );
    assert_eq!(store.current_revision().await.expect("revision"), 10);
    store.compact(10).await.expect("compact all");
    let mut watch = store.watch("/c/", 10).await.expect("watch at current");
    let r = store.create("/c/new", Vec::new()).await.expect("create");
    assert_eq!(revisions(&events_until(&mut watch, r).await), [11]);
}

#[tokio::test]
async fn watch_from_a_future_revision_waits_for_it() {
    let (_dir, store) = open_store();
    store.create("/f/0", Vec::new()).await.expect("create");
    let mut watch = store.watch("/f/", 3).await.expect("watch ahead");
    for i in 1..6 {
        store
            .create(&format!("/f/{i}"), Vec::new())
            .await
            .expect("create");
    }
    assert_eq!(revisions(&events_until(&mut watch, 6).await), [4, 5, 6]);
}

#[tokio::test]
async fn dropping_the_store_ends_watches() {
    let (_dir, store) = open_store();
    let mut watch = store.watch("/", 0).await.expect("watch");
    store.create("/k", Vec::new()).await.expect("create");
    assert_eq!(revisions(&events_until(&mut watch, 1).await), [1]);
    drop(store);
    let end = tokio::time::timeout(EVENT_WAIT, watch.next())
        .await
        .expect("end in time");
    assert!(end.is_none());
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("store.db");
    {
        let store = SqliteStore::open(&path).expect("open");
        let a = store.create("/a", b"1".to_vec()).await.expect("create");
        store.update("/a", b"2".to_vec(), a).await.expect("update");
        store.create("/b", b"b".to_vec()).await.expect("create");
        store.delete("/b", None).await.expect("delete");
        store.create("/c", b"c".to_vec()).await.expect("create");
        store.compact(1).await.expect("compact");
    }
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), 5);
    assert_eq!(store.compacted_revision(), 1);
    let kv = store.get("/a").await.expect("get").expect("present");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], 1, 2)
    );
    assert_eq!(store.get("/b").await.expect("get"), None);
    assert!(matches!(
        store.watch("/", 0).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/", 1).await.expect("watch");
    assert_eq!(revisions(&events_until(&mut watch, 5).await), [2, 3, 4, 5]);
    // The revision goes on from where it was.
    assert_eq!(store.create("/d", Vec::new()).await.expect("create"), 6);
    assert_eq!(revisions(&events_until(&mut watch, 6).await), [6]);
}

#[tokio::test]
async fn a_store_file_has_one_writer_at_a_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).expect("open");
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Backend(_))
    ));
    store.create("/k", Vec::new()).await.expect("create");
    drop(store);
    let store = SqliteStore::open(&path).expect("open after close");
    assert_eq!(store.current_revision().await.expect("revision"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_are_group_committed_with_dense_revisions() {
    let (_dir, store) = open_store();
    const N: usize = 1000;
    let started = Instant::now();
    let results = futures::future::join_all((0..N).map(|i| {
        let store = store.clone();
        async move { store.create(&format!("/load/{i:04}"), vec![0; 64]).await }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut revisions: Vec<i64> = results.into_iter().map(|r| r.expect("create")).collect();
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=N as i64).collect::<Vec<_>>());

    let stats = store.writer_stats();
    assert_eq!(stats.operations, N as u64);
    assert!(
        stats.batches < N as u64 && stats.largest_batch > 1,
        "writes were not batched: {stats:?}"
    );
    eprintln!(
        "{N} concurrent creates in {elapsed:?} ({:.0}/s), {} commits, largest batch {}",
        N as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.largest_batch
    );
    let listed = store.list("/load/", None, 0).await.expect("list");
    assert_eq!((listed.items.len(), listed.revision), (N, N as i64));
}
