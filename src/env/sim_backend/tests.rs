//! Simulation-only tests of the seam's plugins (`cargo sim --lib env::`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use madsim::runtime::{Handle, Runtime};

use super::disk::fs as raw_fs;
use crate::env::sim_control::{self, DiskFaults, FsPlants, NodeId};
use crate::env::{self, fs};

use crate::env::testing::simulation_runtime_with_seed as runtime_with_seed;

/// Creates a node (no init task) and returns its id.
fn create_node(name: &str, ip: &str) -> NodeId {
    Handle::current()
        .create_node()
        .name(name)
        .ip(ip.parse().expect("an IP address"))
        .build()
        .id()
}

/// Runs `work` as a task on `node` and waits for its output.
async fn on_node<T, Fut>(node: NodeId, work: Fut) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    Handle::current()
        .get_node(node)
        .expect("node exists")
        .spawn(work)
        .await
        .expect("node task completes")
}

/// Kills `node` (a crash of its disk) and boots it again.
fn crash(node: NodeId) {
    let handle = Handle::current();
    handle.kill(node);
    handle.restart(node);
}

const DIR: &str = "/data";

fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

#[test]
fn unsynced_data_is_lost_on_kill_and_synced_data_kept() {
    runtime_with_seed(1).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            let kept = fs::File::create(path("kept")).await.unwrap();
            kept.append(b"synced").await.unwrap();
            kept.sync().await.unwrap();
            fs::sync_dir(DIR).await.unwrap();
            kept.append(b"-lost").await.unwrap();
            // Its data is synced but its name never is.
            let unnamed = fs::File::create(path("unnamed")).await.unwrap();
            unnamed.append(b"data").await.unwrap();
            unnamed.sync().await.unwrap();
            assert_eq!(fs::read(path("kept")).await.unwrap(), b"synced-lost");
        })
        .await;
        assert_eq!(
            sim_control::durable_content(node, &path("kept")).as_deref(),
            Some(&b"synced"[..])
        );
        assert_eq!(sim_control::durable_content(node, &path("unnamed")), None);
        assert_eq!(sim_control::pending_bytes(node), 5);

        crash(node);
        on_node(node, async {
            assert_eq!(fs::read(path("kept")).await.unwrap(), b"synced");
            assert!(!fs::exists(path("unnamed")).await.unwrap());
            assert_eq!(fs::list_dir(DIR).await.unwrap(), vec!["kept"]);
        })
        .await;
        assert_eq!(sim_control::pending_bytes(node), 0);
    });
}

#[test]
fn renames_and_removals_need_a_directory_sync() {
    runtime_with_seed(2).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            fs::write_atomic(path("a"), b"content").await.unwrap();
            fs::write_atomic(path("doomed"), b"x").await.unwrap();
            fs::rename(path("a"), path("b")).await.unwrap();
            fs::remove_file(path("doomed")).await.unwrap();
            assert_eq!(fs::list_dir(DIR).await.unwrap(), vec!["b"]);
        })
        .await;
        crash(node);
        on_node(node, async {
            assert_eq!(fs::list_dir(DIR).await.unwrap(), vec!["a", "doomed"]);
            fs::rename(path("a"), path("b")).await.unwrap();
            fs::remove_file(path("doomed")).await.unwrap();
            fs::sync_dir(DIR).await.unwrap();
        })
        .await;
        crash(node);
        on_node(node, async {
            assert_eq!(fs::list_dir(DIR).await.unwrap(), vec!["b"]);
            assert_eq!(fs::read(path("b")).await.unwrap(), b"content");
        })
        .await;
    });
}

/// Creates `dir/file` holding `content`, with the content and the name synced, but nothing
/// done about `dir`'s own entry.
async fn write_synced_file(dir: &Path, content: &[u8]) {
    let file = fs::File::create(dir.join("file")).await.unwrap();
    file.append(content).await.unwrap();
    file.sync().await.unwrap();
    fs::sync_dir(dir).await.unwrap();
}

#[test]
fn a_directory_created_without_a_parent_sync_is_lost_on_crash_with_its_files() {
    runtime_with_seed(8).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            raw_fs::create_dir_all(Path::new(DIR)).await.unwrap();
            write_synced_file(Path::new(DIR), b"synced inside").await;
            assert_eq!(fs::list_dir("/").await.unwrap(), vec!["data"]);
        })
        .await;
        // Its content and name are synced, but the directory holding it is not.
        assert_eq!(sim_control::durable_content(node, &path("file")), None);
        crash(node);
        on_node(node, async {
            assert!(!fs::exists(DIR).await.unwrap());
            assert!(fs::list_dir("/").await.unwrap().is_empty());
            assert!(fs::File::create(path("file")).await.is_err());
        })
        .await;
    });
}

#[test]
fn a_directory_survives_a_crash_once_its_parent_is_synced() {
    runtime_with_seed(9).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            raw_fs::create_dir_all(Path::new(DIR)).await.unwrap();
            fs::sync_dir("/").await.unwrap();
            write_synced_file(Path::new(DIR), b"kept").await;
        })
        .await;
        assert_eq!(
            sim_control::durable_content(node, &path("file")).as_deref(),
            Some(&b"kept"[..])
        );
        crash(node);
        on_node(node, async {
            assert_eq!(fs::read(path("file")).await.unwrap(), b"kept");
        })
        .await;
    });
}

#[test]
fn a_lost_ancestor_takes_synced_subdirectories_along() {
    runtime_with_seed(10).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        let nested = Path::new("/data/a/b");
        on_node(node, async move {
            raw_fs::create_dir_all(nested).await.unwrap();
            // Every entry below /data is synced; /data's own entry in / is not.
            fs::sync_dir("/data").await.unwrap();
            fs::sync_dir("/data/a").await.unwrap();
            write_synced_file(nested, b"orphan").await;
        })
        .await;
        assert_eq!(
            sim_control::durable_content(node, &nested.join("file")),
            None
        );
        crash(node);
        on_node(node, async move {
            for dir in ["/data", "/data/a", "/data/a/b"] {
                assert!(!fs::exists(dir).await.unwrap(), "{dir} survived");
            }
            // What a crash lost stays lost: re-creating /data does not bring back its old tree.
            raw_fs::create_dir_all(Path::new(DIR)).await.unwrap();
            assert!(fs::list_dir(DIR).await.unwrap().is_empty());
        })
        .await;
    });
}

#[test]
fn create_dir_all_makes_every_directory_it_creates_durable() {
    runtime_with_seed(11).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        let nested = Path::new("/data/a/b");
        on_node(node, async move {
            fs::create_dir_all(DIR).await.unwrap();
            // Only a and b are new here; /data already was.
            fs::create_dir_all(nested).await.unwrap();
            write_synced_file(nested, b"kept").await;
            // A relative path (the default data directory is one) hangs off the other root.
            fs::create_dir_all("relative/dir").await.unwrap();
            write_synced_file(Path::new("relative/dir"), b"relative").await;
        })
        .await;
        crash(node);
        on_node(node, async move {
            assert_eq!(fs::read(nested.join("file")).await.unwrap(), b"kept");
            assert_eq!(fs::read("relative/dir/file").await.unwrap(), b"relative");
        })
        .await;
    });
}

#[test]
fn create_dir_all_planted_to_skip_the_parent_sync_loses_the_directory() {
    runtime_with_seed(12).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        sim_control::set_fs_plants(
            node,
            FsPlants {
                create_dir_all_skips_parent_sync: true,
            },
        );
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            write_synced_file(Path::new(DIR), b"lost").await;
        })
        .await;
        crash(node);
        on_node(node, async {
            assert!(!fs::exists(DIR).await.unwrap());
        })
        .await;
    });
}

#[test]
fn a_lost_rename_reverts_and_a_lost_creation_vanishes_with_its_contents() {
    runtime_with_seed(13).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            fs::write_atomic(path("state"), b"old").await.unwrap();
            // write_atomic's steps, without the final directory sync.
            let temp = fs::File::create(path("state.tmp")).await.unwrap();
            temp.append(b"new").await.unwrap();
            temp.sync().await.unwrap();
            fs::rename(path("state.tmp"), path("state")).await.unwrap();
            assert_eq!(fs::read(path("state")).await.unwrap(), b"new");
            let created = fs::File::create(path("created")).await.unwrap();
            created.append(b"content").await.unwrap();
            created.sync().await.unwrap();
        })
        .await;
        crash(node);
        on_node(node, async {
            assert_eq!(fs::list_dir(DIR).await.unwrap(), vec!["state"]);
            assert_eq!(fs::read(path("state")).await.unwrap(), b"old");
        })
        .await;
    });
}

#[test]
fn renaming_a_directory_is_refused_rather_than_modelled_wrongly() {
    runtime_with_seed(14).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            fs::create_dir_all(path("sub")).await.unwrap();
            let error = fs::rename(path("sub"), path("moved")).await.unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::Unsupported, "{error}");
        })
        .await;
    });
}

/// Writes a synced base, then two unsynced appends, then crashes with certain tearing; returns
/// what the file holds after the restart.
fn torn_crash_outcome(seed: u64) -> Vec<u8> {
    runtime_with_seed(seed).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        sim_control::set_disk_faults(
            node,
            DiskFaults {
                torn_write_probability: 1.0,
                ..DiskFaults::default()
            },
        );
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            let file = fs::File::create(path("log")).await.unwrap();
            file.append(b"base:").await.unwrap();
            file.sync().await.unwrap();
            fs::sync_dir(DIR).await.unwrap();
            file.append(b"0123456789").await.unwrap();
            file.append(b"abcdefghij").await.unwrap();
        })
        .await;
        crash(node);
        on_node(node, async { fs::read(path("log")).await.unwrap() }).await
    })
}

#[test]
fn torn_writes_leave_an_ordered_prefix_of_the_pending_writes() {
    let everything = b"base:0123456789abcdefghij";
    let mut strictly_torn = 0;
    for seed in 0..32 {
        let survived = torn_crash_outcome(seed);
        assert!(
            survived.len() >= 5 && everything.starts_with(&survived),
            "seed {seed}: {:?} is not base + a prefix of the pending writes",
            String::from_utf8_lossy(&survived)
        );
        if survived.len() != 5 && survived.len() != 15 && survived.len() != 25 {
            strictly_torn += 1;
        }
        assert_eq!(
            torn_crash_outcome(seed),
            survived,
            "seed {seed} is not deterministic"
        );
    }
    assert!(strictly_torn > 0, "no seed tore a write in the middle");
}

#[test]
fn lying_fsync_loses_synced_data() {
    runtime_with_seed(3).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            fs::write_atomic(path("state"), b"old").await.unwrap();
        })
        .await;
        sim_control::set_disk_faults(
            node,
            DiskFaults {
                lying_fsync: true,
                ..DiskFaults::default()
            },
        );
        on_node(node, async {
            let file = fs::File::open(path("state")).await.unwrap();
            file.write_at(0, b"new").await.unwrap();
            file.sync().await.expect("a lying fsync reports success");
            fs::create_dir_all(path("sub"))
                .await
                .expect("a lying directory sync reports success");
        })
        .await;
        crash(node);
        on_node(node, async {
            assert_eq!(fs::read(path("state")).await.unwrap(), b"old");
            assert!(!fs::exists(path("sub")).await.unwrap());
        })
        .await;
    });
}

#[test]
fn failing_disk_refuses_writes_but_serves_reads() {
    runtime_with_seed(4).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        on_node(node, async {
            fs::create_dir_all(DIR).await.unwrap();
            fs::write_atomic(path("state"), b"kept").await.unwrap();
        })
        .await;
        sim_control::set_disk_faults(
            node,
            DiskFaults {
                fail_writes: true,
                latency_min: Duration::from_millis(1),
                latency_max: Duration::from_millis(5),
                ..DiskFaults::default()
            },
        );
        on_node(node, async {
            let file = fs::File::open(path("state")).await.unwrap();
            let error = file.append(b"more").await.unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
            assert_eq!(
                file.sync().await.unwrap_err().kind(),
                std::io::ErrorKind::StorageFull
            );
            assert!(fs::File::create(path("new")).await.is_err());
            let error = fs::create_dir_all(path("sub")).await.unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
            assert_eq!(file.read_all().await.unwrap(), b"kept");
        })
        .await;
    });
}

#[test]
fn file_handles_of_a_crashed_boot_are_refused() {
    runtime_with_seed(5).block_on(async {
        let node = create_node("disk", "10.0.0.1");
        let (sender, receiver) = std::sync::mpsc::channel();
        on_node(node, async move {
            fs::create_dir_all(DIR).await.unwrap();
            fs::write_atomic(path("state"), b"v1").await.unwrap();
            sender
                .send(fs::File::open(path("state")).await.unwrap())
                .unwrap();
        })
        .await;
        let old_handle = receiver.recv().unwrap();
        crash(node);
        on_node(node, async move {
            let error = old_handle.write_at(0, b"v2").await.unwrap_err();
            assert!(error.to_string().contains("stale"), "{error}");
            assert_eq!(fs::read(path("state")).await.unwrap(), b"v1");
        })
        .await;
    });
}

#[test]
fn each_node_reads_its_own_skewed_clock() {
    runtime_with_seed(6).block_on(async {
        let steady = create_node("steady", "10.0.0.1");
        let ahead = create_node("ahead", "10.0.0.2");
        let fast = create_node("fast", "10.0.0.3");
        sim_control::set_clock_skew(ahead, 2_000_000_000, 0);
        sim_control::set_clock_skew(fast, 0, 100_000);
        assert_eq!(sim_control::clock_skew(ahead), (2_000_000_000, 0));

        let steady_now = on_node(steady, async { env::now() }).await;
        let ahead_now = on_node(ahead, async { env::now() }).await;
        let gap = ahead_now.duration_since(steady_now);
        assert!(
            gap >= Duration::from_millis(1_990) && gap <= Duration::from_millis(2_010),
            "the node set 2 s ahead reads {gap:?} ahead"
        );
        let steady_wall = on_node(steady, async { env::unix_time_ms() }).await;
        let ahead_wall = on_node(ahead, async { env::unix_time_ms() }).await;
        assert!(
            (1_990..=2_010).contains(&(ahead_wall - steady_wall)),
            "wall clocks differ by {} ms",
            ahead_wall - steady_wall
        );

        // A 10% fast clock sleeps 1 s of its own time in about 0.909 s of true time, and its
        // own clock shows the full second.
        let (true_slept, local_slept) = on_node(fast, async {
            let true_start = std::time::Instant::now();
            let local_start = env::now();
            env::sleep(Duration::from_secs(1)).await;
            (true_start.elapsed(), local_start.elapsed())
        })
        .await;
        assert!(
            true_slept >= Duration::from_millis(905) && true_slept <= Duration::from_millis(915),
            "fast clock slept {true_slept:?} of true time"
        );
        assert!(local_slept >= Duration::from_secs(1), "{local_slept:?}");

        // Moving a clock back holds it still: readings never decrease.
        let before = on_node(ahead, async { env::now() }).await;
        sim_control::set_clock_skew(ahead, 0, 0);
        let after = on_node(ahead, async { env::now() }).await;
        assert!(after >= before, "clock went back: {before:?} -> {after:?}");
    });
}

#[test]
#[should_panic(expected = "is not registered")]
fn a_runtime_without_the_plugins_fails_with_a_clear_message() {
    Runtime::with_seed_and_config(7, madsim::Config::default()).block_on(async {
        let _ = env::now();
    });
}
