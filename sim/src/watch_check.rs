//! The watch checker: each watcher sees exactly the committed changes to its keys, in index
//! order, none missed or repeated, across reconnects, node switches and leader changes.
//!
//! The truth is what the nodes applied: every node reports the changes of each entry it applies
//! (`NodeEvent::Changed`), and since nodes apply one committed log, the union over nodes is the
//! committed changes up to the highest applied index (two nodes that disagree at one index fail
//! here too, besides state machine safety). A watcher records every answer it got, in order:
//! the index it asked from, and either the events and the index to continue from, or a 410
//! with the oldest index the node still serves. For each answer the checker demands:
//! - it continues where the previous answer left the watcher (the client's own bookkeeping);
//! - events are exactly the truth's changes to the watcher's keys with an index in
//!   `(asked, answer index]`, in order, with their values;
//! - a 410 names an oldest index above the asked one (the changes in between are the only ones
//!   a watcher may legitimately not see, and it says so).

use std::collections::BTreeMap;
use std::fmt;

/// One key's change, as the truth and the watchers hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Log index of the entry that made it.
    pub index: u64,
    /// The key.
    pub key: String,
    /// The new value; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "{}: put {}={}",
                self.index,
                self.key,
                String::from_utf8_lossy(value)
            ),
            None => write!(f, "{}: delete {}", self.index, self.key),
        }
    }
}

/// Which keys a watcher follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// One key.
    Key(String),
    /// Keys with a prefix.
    Prefix(String),
}

impl Selector {
    /// Whether `key` is followed.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Selector::Key(wanted) => key == wanted,
            Selector::Prefix(prefix) => key.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Key(key) => write!(f, "key {key:?}"),
            Selector::Prefix(prefix) => write!(f, "prefix {prefix:?}"),
        }
    }
}

/// One answer a watcher got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `200`: the events and where to continue.
    Events {
        /// The `index=` asked.
        asked: u64,
        /// The answer's index.
        index: u64,
        /// The events, as received.
        events: Vec<Change>,
    },
    /// `410`: the asked index is older than the node's history.
    Compacted {
        /// The `index=` asked.
        asked: u64,
        /// The oldest index the node still serves.
        oldest: u64,
    },
}

/// Everything one watcher saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatcherLog {
    /// The watcher's number.
    pub watcher: u64,
    /// Its keys.
    pub selector: Selector,
    /// The index of its first call.
    pub start_index: u64,
    /// Its answers, in order.
    pub answers: Vec<Answer>,
}

/// The committed changes, by index (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    changes: BTreeMap<u64, Vec<Change>>,
}

impl Truth {
    /// Records what `node` applied at `index`; an error when another node applied other changes
    /// there.
    pub fn observe(&mut self, node: &str, index: u64, changes: Vec<Change>) -> Result<(), String> {
        match self.changes.get(&index) {
            None => {
                self.changes.insert(index, changes);
                Ok(())
            }
            Some(known) if *known == changes => Ok(()),
            Some(known) => Err(format!(
                "{node} applied [{}] at {index}, another node [{}]",
                list(&changes),
                list(known)
            )),
        }
    }

    fn matching(&self, selector: &Selector, after: u64, up_to: u64) -> Vec<Change> {
        if up_to <= after {
            return Vec::new();
        }
        self.changes
            .range(after + 1..=up_to)
            .flat_map(|(_, changes)| changes.iter())
            .filter(|change| selector.matches(&change.key))
            .cloned()
            .collect()
    }
}

fn list(changes: &[Change]) -> String {
    changes
        .iter()
        .map(Change::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one watcher against the truth; the first broken promise, explained.
pub fn check(truth: &Truth, log: &WatcherLog) -> Result<(), String> {
    let who = format!("watcher {} ({})", log.watcher, log.selector);
    let mut position = log.start_index;
    for (number, answer) in log.answers.iter().enumerate() {
        match answer {
            Answer::Events {
                asked,
                index,
                events,
            } => {
                if *asked != position {
                    return Err(format!(
                        "{who}: answer {number} asked from {asked}, not from {position} where it stood"
                    ));
                }
                if index < asked {
                    return Err(format!(
                        "{who}: answer {number} to index={asked} moved it back to {index}"
                    ));
                }
                let expected = truth.matching(&log.selector, *asked, *index);
                if *events != expected {
                    return Err(format!(
                        "{who}: answer {number} to index={asked} (up to {index}) carried [{}], the committed changes are [{}]",
                        list(events),
                        list(&expected)
                    ));
                }
                position = *index;
            }
            Answer::Compacted { asked, oldest } => {
                if *asked != position {
                    return Err(format!(
                        "{who}: answer {number} asked from {asked}, not from {position} where it stood"
                    ));
                }
                if oldest <= asked {
                    return Err(format!(
                        "{who}: answer {number} said index={asked} is compacted although the oldest index served is {oldest}"
                    ));
                }
                position = *oldest;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, key: &str, value: &str) -> Change {
        Change {
            index,
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn delete(index: u64, key: &str) -> Change {
        Change {
            index,
            key: key.into(),
            value: None,
        }
    }

    /// Changes at 2 (k0), 3 (k1), 5 (k0 deleted), 6 (k10); 4 was a no-op entry.
    fn truth() -> Truth {
        let mut truth = Truth::default();
        truth.observe("n1", 2, vec![put(2, "k0", "a")]).unwrap();
        truth.observe("n2", 3, vec![put(3, "k1", "b")]).unwrap();
        truth.observe("n1", 5, vec![delete(5, "k0")]).unwrap();
        truth.observe("n3", 6, vec![put(6, "k10", "c")]).unwrap();
        truth
    }

    fn log(selector: Selector, answers: Vec<Answer>) -> WatcherLog {
        WatcherLog {
            watcher: 0,
            selector,
            start_index: 0,
            answers,
        }
    }

    fn events(asked: u64, index: u64, events: Vec<Change>) -> Answer {
        Answer::Events {
            asked,
            index,
            events,
        }
    }

    #[test]
    fn a_watcher_that_saw_every_change_once_in_order_passes() {
        let key = log(
            Selector::Key("k0".into()),
            vec![
                events(0, 3, vec![put(2, "k0", "a")]),
                events(3, 4, vec![]),
                events(4, 6, vec![delete(5, "k0")]),
            ],
        );
        assert_eq!(check(&truth(), &key), Ok(()));
        let prefix = log(
            Selector::Prefix("k1".into()),
            vec![events(0, 6, vec![put(3, "k1", "b"), put(6, "k10", "c")])],
        );
        assert_eq!(check(&truth(), &prefix), Ok(()));
    }

    #[test]
    fn a_missed_change_fails() {
        let missed = log(
            Selector::Key("k0".into()),
            vec![events(0, 3, vec![put(2, "k0", "a")]), events(3, 6, vec![])],
        );
        let error = check(&truth(), &missed).unwrap_err();
        assert!(error.contains("5: delete k0"), "{error}");
    }

    #[test]
    fn a_change_seen_twice_across_answers_fails() {
        let repeated = log(
            Selector::Key("k0".into()),
            vec![
                events(0, 2, vec![put(2, "k0", "a")]),
                events(2, 5, vec![put(2, "k0", "a"), delete(5, "k0")]),
            ],
        );
        let error = check(&truth(), &repeated).unwrap_err();
        assert!(error.contains("answer 1"), "{error}");
    }

    #[test]
    fn changes_out_of_order_a_wrong_value_or_a_phantom_fail() {
        let selector = Selector::Prefix(String::new());
        let out_of_order = log(
            selector.clone(),
            vec![events(0, 3, vec![put(3, "k1", "b"), put(2, "k0", "a")])],
        );
        assert!(check(&truth(), &out_of_order).is_err());
        let wrong_value = log(
            selector.clone(),
            vec![events(0, 2, vec![put(2, "k0", "x")])],
        );
        assert!(check(&truth(), &wrong_value).is_err());
        let phantom = log(
            selector,
            vec![events(
                0,
                4,
                vec![put(2, "k0", "a"), put(3, "k1", "b"), put(4, "k9", "z")],
            )],
        );
        assert!(check(&truth(), &phantom).is_err());
    }

    #[test]
    fn a_watcher_that_skips_ahead_or_moves_back_fails() {
        let skipped = log(
            Selector::Key("k0".into()),
            vec![events(0, 2, vec![put(2, "k0", "a")]), events(5, 6, vec![])],
        );
        assert!(check(&truth(), &skipped)
            .unwrap_err()
            .contains("not from 2"));
        let back = log(
            Selector::Key("k0".into()),
            vec![events(0, 3, vec![put(2, "k0", "a")]), events(3, 1, vec![])],
        );
        assert!(check(&truth(), &back)
            .unwrap_err()
            .contains("moved it back"));
    }

    #[test]
    fn a_compacted_answer_skips_to_its_oldest_index_but_must_name_a_later_one() {
        let compacted = log(
            Selector::Key("k0".into()),
            vec![
                Answer::Compacted {
                    asked: 0,
                    oldest: 4,
                },
                events(4, 6, vec![delete(5, "k0")]),
            ],
        );
        assert_eq!(check(&truth(), &compacted), Ok(()));
        let bogus = log(
            Selector::Key("k0".into()),
            vec![Answer::Compacted {
                asked: 3,
                oldest: 3,
            }],
        );
        let bogus = WatcherLog {
            start_index: 3,
            ..bogus
        };
        assert!(check(&truth(), &bogus).unwrap_err().contains("compacted"));
    }

    #[test]
    fn nodes_that_applied_different_changes_at_one_index_fail() {
        let mut truth = truth();
        let error = truth
            .observe("n2", 2, vec![put(2, "k0", "other")])
            .unwrap_err();
        assert!(error.contains("n2 applied"), "{error}");
    }
}
