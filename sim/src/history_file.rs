//! The client history as a JSON file, for checkers we did not write (`cargo sim replay SEED
//! --history-out FILE`) and back (`cargo sim check FILE`).
//!
//! # Format (`raft-kv-history/1`)
//!
//! ```json
//! {
//!   "format": "raft-kv-history/1",
//!   "seed": 2536,
//!   "time_unit": "ns",
//!   "operations": [
//!     {"index": 0, "client": 1, "call": 1200000, "return": 9800000,
//!      "input": {"op": "put", "key": "k0", "value": "c1.0"},
//!      "output": {"mod_index": 7}},
//!     {"index": 1, "client": 2, "call": 1300000, "return": null,
//!      "input": {"op": "cas", "key": "k0", "expected_mod_index": 7, "value": "c2.4"},
//!      "output": null}
//!   ]
//! }
//! ```
//!
//! - `client`: the process that issued the operation (one client issues one operation at a
//!   time; the final reads after the heal come from client number `clients_count`).
//! - `call`, `return`: virtual nanoseconds since the start of the run. `return` and `output` are
//!   `null` when the outcome is unknown (the client gave up): the operation may have taken effect
//!   at any time after its call, or never.
//! - `input.op` is `get`, `put`, `delete` or `cas`; `put` and `cas` carry the `value` (text),
//!   `cas` the `expected_mod_index` (0: the key must be absent).
//! - `output` by operation: `get` → `value` (missing or `null` when the key is absent) and
//!   `mod_index` (0 when absent); `put` → `mod_index` (the log index of the write); `delete` →
//!   `existed`; `cas` → `ok` and, when `ok`, `mod_index`.
//! - `txn` (key `"t0+t1"`, the transaction group): `if_value` (`null`: if `t0` is absent) and
//!   `value`: if `t0` holds `if_value`, put `value` into `t0` and `t1` (`null`: delete both),
//!   else get both. Its
//!   output: `ok` (the success branch ran), `index` (the transaction's log index), `reads` (the
//!   failure branch's values of `t0` and `t1`, `null` when absent; empty on success). A retry
//!   answered from the idempotency table carries the index of the first application.
//! - `index` is the operation's position (the `#n` of reports); readers may ignore it.
//!
//! The model the history must satisfy is the one of [`crate::linearizability`]: every write that
//! changes a key takes a larger log index than the previous one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::linearizability::{KvInput, KvOutput, Operation};

/// The format name and version written into (and required of) every file.
pub const FORMAT: &str = "raft-kv-history/1";

/// The largest history file `read` accepts.
pub const HISTORY_FILE_BYTES_MAX: u64 = 256 << 20;

/// A history file.
#[derive(Debug, Serialize, Deserialize)]
struct HistoryFile {
    format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    time_unit: String,
    operations: Vec<FileOperation>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileOperation {
    #[serde(default)]
    index: usize,
    client: u64,
    call: u64,
    #[serde(rename = "return")]
    ret: Option<u64>,
    input: FileInput,
    output: Option<FileOutput>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum FileInput {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected_mod_index: u64,
        value: String,
    },
    Txn {
        key: String,
        if_value: Option<String>,
        value: Option<String>,
    },
}

/// Every operation's output in one flat shape (which fields apply depends on the input).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mod_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    existed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reads: Option<Vec<Option<String>>>,
}

fn text(index: usize, bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        format!("op #{index}: a value is not UTF-8 text, which the JSON history cannot hold")
    })
}

/// The history as a `raft-kv-history/1` JSON document.
pub fn to_json(history: &[Operation], seed: Option<u64>) -> Result<String, String> {
    let mut operations = Vec::with_capacity(history.len());
    for (index, op) in history.iter().enumerate() {
        let key = op.key.clone();
        let input = match &op.input {
            KvInput::Get => FileInput::Get { key },
            KvInput::Put { value } => FileInput::Put {
                key,
                value: text(index, value)?,
            },
            KvInput::Delete => FileInput::Delete { key },
            KvInput::Cas {
                expected_mod_index,
                value,
            } => FileInput::Cas {
                key,
                expected_mod_index: *expected_mod_index,
                value: text(index, value)?,
            },
            KvInput::Txn { if_value, value } => FileInput::Txn {
                key,
                if_value: if_value.as_deref().map(|v| text(index, v)).transpose()?,
                value: value.as_deref().map(|v| text(index, v)).transpose()?,
            },
        };
        let output = match &op.output {
            None => None,
            Some(KvOutput::Get { value, mod_index }) => Some(FileOutput {
                value: value.as_deref().map(|v| text(index, v)).transpose()?,
                mod_index: Some(*mod_index),
                ..FileOutput::default()
            }),
            Some(KvOutput::Put { mod_index }) => Some(FileOutput {
                mod_index: Some(*mod_index),
                ..FileOutput::default()
            }),
            Some(KvOutput::Delete { existed }) => Some(FileOutput {
                existed: Some(*existed),
                ..FileOutput::default()
            }),
            Some(KvOutput::CasOk { mod_index }) => Some(FileOutput {
                ok: Some(true),
                mod_index: Some(*mod_index),
                ..FileOutput::default()
            }),
            Some(KvOutput::CasMismatch) => Some(FileOutput {
                ok: Some(false),
                ..FileOutput::default()
            }),
            Some(KvOutput::Txn {
                index: log_index,
                succeeded,
                reads,
            }) => Some(FileOutput {
                ok: Some(*succeeded),
                index: Some(*log_index),
                reads: Some(
                    reads
                        .iter()
                        .map(|read| read.as_deref().map(|v| text(index, v)).transpose())
                        .collect::<Result<_, _>>()?,
                ),
                ..FileOutput::default()
            }),
        };
        operations.push(FileOperation {
            index,
            client: op.client,
            call: op.call,
            ret: op.ret,
            input,
            output,
        });
    }
    let file = HistoryFile {
        format: FORMAT.to_string(),
        seed,
        time_unit: "ns".to_string(),
        operations,
    };
    serde_json::to_string_pretty(&file).map_err(|error| format!("cannot encode JSON: {error}"))
}

/// Parses a `raft-kv-history/1` JSON document.
pub fn from_json(json: &str) -> Result<Vec<Operation>, String> {
    let file: HistoryFile =
        serde_json::from_str(json).map_err(|error| format!("not a history file: {error}"))?;
    if file.format != FORMAT {
        return Err(format!(
            "unsupported format {:?} (this checker reads {FORMAT:?})",
            file.format
        ));
    }
    if file.time_unit != "ns" {
        return Err(format!(
            "unsupported time unit {:?} (expected \"ns\")",
            file.time_unit
        ));
    }
    let mut history = Vec::with_capacity(file.operations.len());
    for (position, op) in file.operations.into_iter().enumerate() {
        let malformed = |why: &str| format!("operation {position}: {why}");
        let (key, input) = match op.input {
            FileInput::Get { key } => (key, KvInput::Get),
            FileInput::Put { key, value } => (
                key,
                KvInput::Put {
                    value: value.into_bytes(),
                },
            ),
            FileInput::Delete { key } => (key, KvInput::Delete),
            FileInput::Cas {
                key,
                expected_mod_index,
                value,
            } => (
                key,
                KvInput::Cas {
                    expected_mod_index,
                    value: value.into_bytes(),
                },
            ),
            FileInput::Txn {
                key,
                if_value,
                value,
            } => (
                key,
                KvInput::Txn {
                    if_value: if_value.map(String::into_bytes),
                    value: value.map(String::into_bytes),
                },
            ),
        };
        let output = match op.output {
            None => None,
            Some(out) => Some(match (&input, out) {
                (
                    KvInput::Get,
                    FileOutput {
                        value,
                        mod_index: Some(mod_index),
                        existed: None,
                        ok: None,
                        index: None,
                        reads: None,
                    },
                ) => KvOutput::Get {
                    value: value.map(String::into_bytes),
                    mod_index,
                },
                (
                    KvInput::Put { .. },
                    FileOutput {
                        value: None,
                        mod_index: Some(mod_index),
                        existed: None,
                        ok: None,
                        index: None,
                        reads: None,
                    },
                ) => KvOutput::Put { mod_index },
                (
                    KvInput::Delete,
                    FileOutput {
                        value: None,
                        mod_index: None,
                        existed: Some(existed),
                        ok: None,
                        index: None,
                        reads: None,
                    },
                ) => KvOutput::Delete { existed },
                (
                    KvInput::Cas { .. },
                    FileOutput {
                        value: None,
                        mod_index: Some(mod_index),
                        existed: None,
                        ok: Some(true),
                        index: None,
                        reads: None,
                    },
                ) => KvOutput::CasOk { mod_index },
                (
                    KvInput::Cas { .. },
                    FileOutput {
                        value: None,
                        mod_index: None,
                        existed: None,
                        ok: Some(false),
                        index: None,
                        reads: None,
                    },
                ) => KvOutput::CasMismatch,
                (
                    KvInput::Txn { .. },
                    FileOutput {
                        value: None,
                        mod_index: None,
                        existed: None,
                        ok: Some(succeeded),
                        index: Some(index),
                        reads: Some(reads),
                    },
                ) => KvOutput::Txn {
                    index,
                    succeeded,
                    reads: reads
                        .into_iter()
                        .map(|read| read.map(String::into_bytes))
                        .collect(),
                },
                (input, out) => {
                    return Err(malformed(&format!(
                        "output {out:?} does not answer a {} (get: value, mod_index; put: \
                         mod_index; delete: existed; cas: ok and, if ok, mod_index; txn: ok, index, reads)",
                        match input {
                            KvInput::Get => "get",
                            KvInput::Put { .. } => "put",
                            KvInput::Delete => "delete",
                            KvInput::Cas { .. } => "cas",
                            KvInput::Txn { .. } => "txn",
                        }
                    )))
                }
            }),
        };
        history.push(Operation {
            client: op.client,
            key,
            input,
            call: op.call,
            ret: op.ret,
            output,
        });
    }
    Ok(history)
}

/// Writes `history` to `path` as JSON.
#[allow(clippy::disallowed_methods)] // the harness writes the real disk, outside any simulation
pub fn write(path: &Path, history: &[Operation], seed: Option<u64>) -> Result<(), String> {
    let json = to_json(history, seed)?;
    std::fs::write(path, json).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Reads a history from the JSON file at `path` (at most [`HISTORY_FILE_BYTES_MAX`] bytes).
#[allow(clippy::disallowed_methods)] // the harness reads the real disk, outside any simulation
pub fn read(path: &Path) -> Result<Vec<Operation>, String> {
    let cannot = |error: std::io::Error| format!("cannot read {}: {error}", path.display());
    let bytes = std::fs::metadata(path).map_err(cannot)?.len();
    if bytes > HISTORY_FILE_BYTES_MAX {
        return Err(format!(
            "{} holds {bytes} bytes, more than the {HISTORY_FILE_BYTES_MAX} a history file may",
            path.display()
        ));
    }
    let json = std::fs::read_to_string(path).map_err(cannot)?;
    from_json(&json).map_err(|error| format!("{}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{check, Budget, CheckResult};

    fn op(client: u64, input: KvInput, call: u64, answer: Option<(u64, KvOutput)>) -> Operation {
        let (ret, output) = match answer {
            Some((ret, output)) => (Some(ret), Some(output)),
            None => (None, None),
        };
        Operation {
            client,
            key: "k0".into(),
            input,
            call,
            ret,
            output,
        }
    }

    fn put(value: &str) -> KvInput {
        KvInput::Put {
            value: value.into(),
        }
    }

    fn read(value: Option<&str>, mod_index: u64) -> KvOutput {
        KvOutput::Get {
            value: value.map(|v| v.as_bytes().to_vec()),
            mod_index,
        }
    }

    /// Every input and output kind, an unknown outcome, a second key.
    fn passing_history() -> Vec<Operation> {
        let mut history = vec![
            op(0, KvInput::Get, 0, Some((5, read(None, 0)))),
            op(1, put("a"), 10, Some((20, KvOutput::Put { mod_index: 3 }))),
            op(2, put("lost"), 12, None),
            op(
                0,
                KvInput::Cas {
                    expected_mod_index: 3,
                    value: "b".into(),
                },
                30,
                Some((40, KvOutput::CasOk { mod_index: 7 })),
            ),
            op(
                1,
                KvInput::Cas {
                    expected_mod_index: 3,
                    value: "c".into(),
                },
                50,
                Some((60, KvOutput::CasMismatch)),
            ),
            op(0, KvInput::Get, 70, Some((80, read(Some("b"), 7)))),
            op(
                1,
                KvInput::Delete,
                90,
                Some((95, KvOutput::Delete { existed: true })),
            ),
            op(2, KvInput::Get, 100, Some((110, read(None, 0)))),
        ];
        history.push(Operation {
            key: "k1".into(),
            ..op(3, put("z"), 5, Some((8, KvOutput::Put { mod_index: 2 })))
        });
        let txn = |if_value: Option<&str>, value: Option<&str>| KvInput::Txn {
            if_value: if_value.map(|v| v.as_bytes().to_vec()),
            value: value.map(Into::into),
        };
        for (input, call, output) in [
            (
                txn(None, Some("x")),
                1,
                KvOutput::Txn {
                    index: 1,
                    succeeded: true,
                    reads: Vec::new(),
                },
            ),
            (
                txn(Some("w"), Some("y")),
                9,
                KvOutput::Txn {
                    index: 4,
                    succeeded: false,
                    reads: vec![Some(b"x".to_vec()), Some(b"x".to_vec())],
                },
            ),
            (
                txn(Some("x"), None),
                13,
                KvOutput::Txn {
                    index: 6,
                    succeeded: true,
                    reads: Vec::new(),
                },
            ),
        ] {
            history.push(Operation {
                key: crate::linearizability::TXN_GROUP.into(),
                ..op(4, input, call, Some((call + 2, output)))
            });
        }
        history.push(Operation {
            key: crate::linearizability::TXN_GROUP.into(),
            ..op(5, txn(Some("x"), Some("lost")), 20, None)
        });
        history
    }

    fn round_trip(history: &[Operation]) -> Vec<Operation> {
        let json = to_json(history, Some(42)).expect("encode");
        from_json(&json).expect("decode")
    }

    #[test]
    fn a_passing_history_round_trips_exactly_and_stays_linearizable() {
        let history = passing_history();
        assert_eq!(check(&history, Budget::default()), CheckResult::Ok);
        let back = round_trip(&history);
        assert_eq!(back, history);
        assert_eq!(check(&back, Budget::default()), CheckResult::Ok);
    }

    #[test]
    fn a_known_bad_history_round_trips_into_the_same_violation() {
        // A stale read: "a" is read after "b" replaced it.
        let mut history = passing_history();
        history[5] = op(0, KvInput::Get, 70, Some((80, read(Some("a"), 3))));
        let verdict = check(&history, Budget::default());
        assert!(matches!(verdict, CheckResult::Violation(_)), "{verdict:?}");
        assert_eq!(check(&round_trip(&history), Budget::default()), verdict);
    }

    #[test]
    fn the_json_names_each_field_as_documented() {
        let json = to_json(&passing_history(), Some(42)).expect("encode");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["format"], FORMAT);
        assert_eq!(value["seed"], 42);
        let ops = value["operations"].as_array().expect("operations");
        assert_eq!(ops[1]["input"]["op"], "put");
        assert_eq!(ops[1]["input"]["value"], "a");
        assert_eq!(ops[1]["output"]["mod_index"], 3);
        assert_eq!(ops[1]["return"], 20);
        assert!(ops[2]["return"].is_null() && ops[2]["output"].is_null());
        assert_eq!(ops[3]["input"]["expected_mod_index"], 3);
        assert_eq!(ops[3]["output"]["ok"], true);
        assert_eq!(ops[4]["output"]["ok"], false);
        assert_eq!(ops[6]["output"]["existed"], true);
        assert_eq!(ops[7]["index"], 7);
    }

    #[test]
    fn malformed_files_are_refused_with_a_reason() {
        let cases = [
            ("{}", "not a history file"),
            (
                r#"{"format":"other/1","time_unit":"ns","operations":[]}"#,
                "unsupported format",
            ),
            (
                r#"{"format":"raft-kv-history/1","time_unit":"ms","operations":[]}"#,
                "unsupported time unit",
            ),
            (
                r#"{"format":"raft-kv-history/1","time_unit":"ns","operations":[
                    {"client":0,"call":1,"return":2,"input":{"op":"put","key":"k","value":"v"},
                     "output":{"existed":true}}]}"#,
                "does not answer a put",
            ),
            (
                r#"{"format":"raft-kv-history/1","time_unit":"ns","operations":[
                    {"client":0,"call":1,"return":2,"input":{"op":"cas","key":"k","value":"v",
                     "expected_mod_index":1},"output":{"ok":true}}]}"#,
                "does not answer a cas",
            ),
        ];
        for (json, expected) in cases {
            let error = from_json(json).expect_err(json);
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn a_value_that_is_not_text_is_refused_on_export() {
        let history = [op(0, KvInput::Put { value: vec![0xff] }, 0, None)];
        let error = to_json(&history, None).expect_err("not UTF-8");
        assert!(
            error.contains("op #0") && error.contains("UTF-8"),
            "{error}"
        );
    }
}
