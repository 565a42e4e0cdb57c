//! Pattern state on disk: keys past the cache read back from disk, timers and expiries found through the disk's index after a restart, dropped keys never read back stale.

use std::sync::Arc;

use serde_json::json;

use crate::ingest::decode::Event;
use crate::patterns::store::{changelog_key, PatternStore};
use crate::patterns::tests::{event, feed_key, observe_key, rules, ABSENCE, MIN, VELOCITY};
use crate::patterns::Fired;
use crate::rules::RuleSet;
use crate::state::mirror::Mirror;
use crate::store::Store;

/// A mirror of changelog partition 0 of source `tx` in `store`, as a
/// restore leaves it.
fn mirror(store: &Store) -> Arc<Mirror> {
    let table = store
        .sealed_table("mirror.tx-changelog", crate::state::mirror::FORMAT)
        .unwrap();
    let mirror = Mirror::new(table, super::wake_of);
    let next = mirror.checkpoint().unwrap().get(&0).copied().unwrap_or(0);
    mirror.follow(0, next);
    Arc::new(mirror)
}

fn on_disk(mirror: &Arc<Mirror>, cache: usize) -> PatternStore {
    let mut patterns = PatternStore::new(1_000_000);
    patterns.on_disk("tx", Arc::clone(mirror), cache);
    patterns
}

/// Rule 0 applied to event `e` of `key`, as the engine does, at the event's time.
fn feed(set: &RuleSet, store: &PatternStore, key: &str, e: &Arc<Event>) -> Vec<Fired> {
    feed_key(set, store, key, e, e.time_ms).unwrap()
}

/// Writes the key's record as the changelog would have it, then tells the
/// store it is on disk.
async fn save(set: &RuleSet, store: &PatternStore, mirror: &Mirror, key: &str, offset: &mut i64) {
    let rule = &set.rules[0];
    let value = store.snapshot(&rule.id, key, rule.pattern.as_deref());
    let seq = mirror.begin(0);
    mirror
        .applied(
            0,
            &changelog_key(&rule.id, key),
            value.as_deref(),
            seq,
            *offset,
        )
        .await;
    *offset += 1;
    store.saved(&rule.id, key);
}

#[tokio::test]
async fn keys_past_the_cache_are_read_back_from_disk_and_still_fire() {
    let set = rules(VELOCITY);
    let disk = Store::temporary(8 << 20).unwrap();
    let mirror = mirror(&disk);
    let store = on_disk(&mirror, 2);
    let mut offset = 0;
    let mut fired = Vec::new();
    // Three declines for each of ten cards, one round at a time: each
    // card's state leaves memory before its next decline.
    for round in 0..3 {
        for card in 0..10 {
            let key = format!("card-{card}");
            let at = round * MIN + card * 1000;
            let e = event(offset, at, json!({"status": "declined"}));
            for f in feed(&set, &store, &key, &e) {
                fired.push((key.clone(), f.context["count"].clone()));
            }
            save(&set, &store, &mirror, &key, &mut offset).await;
        }
        assert!(
            store.keys_of("declined-velocity") <= 3,
            "memory holds the cache, not every key: {}",
            store.keys_of("declined-velocity")
        );
    }
    assert_eq!(fired.len(), 10, "every card fired once: {fired:?}");
    assert!(fired.iter().all(|(_, count)| count == 3), "{fired:?}");
}

#[tokio::test]
async fn an_absence_fires_from_disk_after_a_restart_and_only_once() {
    let set = rules(ABSENCE);
    let disk = Store::temporary(8 << 20).unwrap();
    let mut offset = 0;
    {
        let mirror = mirror(&disk);
        let store = on_disk(&mirror, 100);
        let browse = event(1, 0, json!({"type": "browse", "item": "shoes"}));
        feed(&set, &store, "u-7", &browse);
        save(&set, &store, &mirror, "u-7", &mut offset).await;
    }
    // A restart: nothing in memory, the timer is on disk.
    let mirror = mirror(&disk);
    let store = on_disk(&mirror, 100);
    assert_eq!(store.keys_of("browsed-no-purchase"), 0);
    let pattern = set.rules[0].pattern.clone();
    let waiting = store.due(30 * MIN, |_| pattern.clone());
    assert!(waiting.fired.is_empty(), "still within its lateness");
    let due = store.due(31 * MIN + 1, |_| pattern.clone());
    assert_eq!(due.fired.len(), 1);
    assert_eq!(due.fired[0].1.context["first"]["item"], "shoes");
    assert_eq!(due.changed.len(), 1);
    save(&set, &store, &mirror, "u-7", &mut offset).await;
    assert!(
        store.due(40 * MIN, |_| pattern.clone()).fired.is_empty(),
        "once"
    );
    assert_eq!(
        mirror
            .get(0, &changelog_key("browsed-no-purchase", "u-7"))
            .unwrap(),
        None,
        "the fired absence holds nothing: its tombstone is on disk"
    );
    assert_eq!(store.keys_of("browsed-no-purchase"), 0);
}

#[tokio::test]
async fn state_past_its_window_is_swept_from_disk() {
    let set = rules(VELOCITY);
    let disk = Store::temporary(8 << 20).unwrap();
    let mut offset = 0;
    {
        let mirror = mirror(&disk);
        let store = on_disk(&mirror, 100);
        let e = event(1, 0, json!({"status": "declined"}));
        feed(&set, &store, "card-9", &e);
        save(&set, &store, &mirror, "card-9", &mut offset).await;
    }
    let mirror = mirror(&disk);
    let store = on_disk(&mirror, 100);
    let pattern = set.rules[0].pattern.clone();
    let print = 1;
    assert!(
        store.sweep(4 * MIN, print, |_| pattern.clone()).is_empty(),
        "within 5m + 2m lateness"
    );
    let gone = store.sweep(8 * MIN, print, |_| pattern.clone());
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].key, "card-9");
    assert_eq!(
        store.snapshot("declined-velocity", "card-9", pattern.as_deref()),
        None
    );
    save(&set, &store, &mirror, "card-9", &mut offset).await;
    assert_eq!(
        mirror
            .get(0, &changelog_key("declined-velocity", "card-9"))
            .unwrap(),
        None
    );
    assert_eq!(store.keys_of("declined-velocity"), 0);
    // A rule removed: its keys leave the disk at the next sweep.
    let e = event(2, 9 * MIN, json!({"status": "declined"}));
    feed(&set, &store, "card-3", &e);
    save(&set, &store, &mirror, "card-3", &mut offset).await;
    let gone = store.sweep(9 * MIN, 2, |_| None);
    assert_eq!(
        gone.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["card-3"]
    );
}

#[tokio::test]
async fn a_dropped_key_starts_fresh_before_its_tombstone_is_on_disk() {
    let set = rules(ABSENCE);
    let disk = Store::temporary(8 << 20).unwrap();
    let mirror = mirror(&disk);
    let store = on_disk(&mirror, 1);
    let mut offset = 0;
    let browse = |n, at| event(n, at, json!({"type": "browse", "item": "shoes"}));
    feed(&set, &store, "u-1", &browse(1, 0));
    save(&set, &store, &mirror, "u-1", &mut offset).await;
    // A purchase ends the absence: the key is dropped, its tombstone not
    // yet on disk, while other keys push it out of the cache.
    feed(
        &set,
        &store,
        "u-1",
        &event(2, MIN, json!({"type": "purchase"})),
    );
    for n in 0..5 {
        let key = format!("u-{}", n + 10);
        feed(&set, &store, &key, &browse(3 + n, MIN));
        save(&set, &store, &mirror, &key, &mut offset).await;
    }
    let pattern = set.rules[0].pattern.clone();
    // Its old record (with a timer) is still on disk, but memory says gone.
    let due = store.due(45 * MIN, |_| pattern.clone());
    assert!(
        due.changed.iter().all(|k| k.key != "u-1"),
        "the dropped key's timer must not fire from its stale disk row"
    );
}

#[tokio::test]
async fn an_event_that_changes_nothing_writes_no_record_and_a_restart_still_counts_right() {
    let set = rules(VELOCITY);
    let disk = Store::temporary(8 << 20).unwrap();
    let mut offset = 0;
    let (declined, approved) = (json!({"status": "declined"}), json!({"status": "approved"}));
    {
        let mirror = mirror(&disk);
        let mut store = on_disk(&mirror, 100);
        store.logged();
        let first = observe_key(&set, &store, "card-1", &event(1, 0, approved.clone()), 0).unwrap();
        assert!(
            !first.changed,
            "an approved swipe leaves a decline window as it was"
        );
        assert_eq!(
            store.keys_of("declined-velocity"),
            0,
            "a key that came and went is not kept"
        );
        let decline = observe_key(
            &set,
            &store,
            "card-1",
            &event(2, MIN, declined.clone()),
            MIN,
        )
        .unwrap();
        assert!(decline.changed);
        save(&set, &store, &mirror, "card-1", &mut offset).await;
        for n in 3..6 {
            let e = event(n, n * MIN / 2, approved.clone());
            let o = observe_key(&set, &store, "card-1", &e, n * MIN / 2).unwrap();
            assert!(!o.changed, "swipe {n} changed nothing");
        }
        let again = observe_key(
            &set,
            &store,
            "card-1",
            &event(6, 3 * MIN, declined.clone()),
            3 * MIN,
        )
        .unwrap();
        assert!(again.changed);
        save(&set, &store, &mirror, "card-1", &mut offset).await;
    }
    // A restart: the two declines are on disk; the third fires.
    let mirror = mirror(&disk);
    let mut store = on_disk(&mirror, 100);
    store.logged();
    let third = feed_key(
        &set,
        &store,
        "card-1",
        &event(7, 4 * MIN, declined),
        4 * MIN,
    )
    .unwrap();
    assert_eq!(
        third.len(),
        1,
        "the third decline within five minutes fires"
    );
    assert_eq!(third[0].context["count"], 3);
}
