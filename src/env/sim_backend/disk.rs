//! The simulated disk: per node, files as durable bytes plus pending (unsynced) operations, and a
//! namespace whose changes are durable only after the directory is synced.
//!
//! madsim's own `fs` cannot model crashes (its `sync_all` is a no-op), so the seam brings this
//! one. Semantics:
//! - writes and resizes go to a file's pending list and are visible to reads at once;
//!   [`File::sync`](fs::File::sync) moves them to the durable image;
//! - creations (of files and of directories), renames and removals change the current namespace;
//!   `sync_dir(dir)` makes the namespace of `dir`'s direct children durable, files and
//!   directories alike. A directory's entry is durable only once its parent was synced after it
//!   was created, like a file's name (POSIX: an fsync of the file or directory itself does not
//!   make its entry in the parent durable);
//! - when the node is killed (madsim's `reset_node` hook) the namespace reverts to its durable
//!   state: names created since their directory's last sync vanish (a lost new file with its
//!   contents), renamed names go back, removed names return. A directory whose own entry is lost
//!   takes everything under it along, even names synced inside it (on a real disk they would be
//!   orphans for fsck). Every file's pending operations are dropped. With probability
//!   `torn_write_probability` (per file) the crash instead lands inside the pending operations:
//!   the first `k` (random) of them reach the platter whole and the next one as a random prefix
//!   of its bytes (a torn write). When `k` is the last one, this is "the last pending write
//!   survives torn". Writes reach the platter in the order they were issued: the model has no
//!   reordering, so a torn write never leaves a hole before older unsynced data;
//! - `lying_fsync`: syncs of files and directories report success and make nothing durable;
//! - `fail_writes`: every mutating call fails with `StorageFull` (like ENOSPC);
//! - every call first waits a random latency drawn from `[latency_min, latency_max]`.
//!
//! A file handle belongs to one boot of its node: after a crash it fails instead of touching the
//! new boot's files.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use madsim::plugin::Simulator;
use madsim::rand::{GlobalRng, Rng};
use madsim::task::NodeId;
use madsim::time::TimeHandle;

use super::plugin;

/// Fault injection for one node's simulated disk. The default is a perfect, instant disk.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiskFaults {
    /// Probability, per file with unsynced operations, that a crash leaves part of them behind
    /// (the last surviving write torn to a prefix) instead of dropping them all.
    pub torn_write_probability: f64,
    /// `sync` and `sync_dir` report success but make nothing durable (a planted bug for the
    /// simulator's checkers to catch).
    pub lying_fsync: bool,
    /// Every mutating call (create, write, resize, sync, rename, remove) fails with
    /// `StorageFull`, like a full disk.
    pub fail_writes: bool,
    /// The shortest delay of a disk call.
    pub latency_min: Duration,
    /// The longest delay of a disk call.
    pub latency_max: Duration,
}

/// Bugs planted in the seam's own file code, for tests that prove the simulated disk and the
/// checkers above it catch them. Simulation builds only; the default plants nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsPlants {
    /// `env::fs::create_dir_all` creates directories without syncing their parents, so a crash
    /// loses each new directory with everything written into it.
    pub create_dir_all_skips_parent_sync: bool,
}

type InodeId = u64;

/// A change to a file's content that is not yet durable.
#[derive(Clone, Debug)]
enum PendingOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl PendingOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            PendingOp::Write { offset, bytes } => write_into(content, *offset, bytes),
            PendingOp::SetLen(len_bytes) => content.resize(to_usize(*len_bytes), 0),
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or_else(|_| panic!("simulated file offset {n} beyond memory"))
}

fn write_into(content: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = to_usize(offset);
    let end = start + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(bytes);
}

/// A file's content.
#[derive(Clone, Debug, Default)]
struct Inode {
    /// What survives a crash.
    durable: Vec<u8>,
    /// Not yet durable, in issue order.
    pending: Vec<PendingOp>,
    /// Invariant: `current` == `durable` with every op of `pending` applied in order.
    current: Vec<u8>,
}

impl Inode {
    fn push(&mut self, op: PendingOp) {
        op.apply(&mut self.current);
        self.pending.push(op);
    }

    fn make_durable(&mut self) {
        for op in self.pending.drain(..) {
            op.apply(&mut self.durable);
        }
        debug_assert_eq!(self.durable, self.current);
    }

    /// The crash: drop the pending operations, or (torn) keep `surviving` of them whole and a
    /// prefix of `torn_prefix_bytes` of the next one.
    fn crash(&mut self, torn: Option<(usize, u64)>) {
        if let Some((surviving, torn_prefix_bytes)) = torn {
            for op in &self.pending[..surviving] {
                op.apply(&mut self.durable);
            }
            match &self.pending[surviving] {
                PendingOp::Write { offset, bytes } => {
                    let prefix_len = to_usize(torn_prefix_bytes).min(bytes.len());
                    write_into(&mut self.durable, *offset, &bytes[..prefix_len]);
                }
                // A resize is atomic: it happened (odd prefix) or not.
                op @ PendingOp::SetLen(_) => {
                    if torn_prefix_bytes % 2 == 1 {
                        op.apply(&mut self.durable);
                    }
                }
            }
        }
        self.pending.clear();
        self.current = self.durable.clone();
    }
}

/// One node's disk.
#[derive(Debug, Default)]
struct NodeDisk {
    /// Bumped by every crash; file handles of an older boot are refused.
    boot: u64,
    faults: DiskFaults,
    plants: FsPlants,
    /// Directories as the running node sees them. The root (`/`, or `` for relative paths) is
    /// implicit and always durable.
    dirs: BTreeSet<PathBuf>,
    /// The directories a crash reverts to (some may be orphans, pruned by the crash).
    durable_dirs: BTreeSet<PathBuf>,
    /// The file names as the running node sees them.
    names: BTreeMap<PathBuf, InodeId>,
    /// The file names a crash reverts to (some may be orphans, pruned by the crash).
    durable_names: BTreeMap<PathBuf, InodeId>,
    inodes: BTreeMap<InodeId, Inode>,
    /// The open handles of this boot, by inode: as in POSIX, a removed file stays readable
    /// through a handle opened before (a leader streams a snapshot file that a newer snapshot
    /// replaced; found by the membership simulation, seed 266). A crash closes them all.
    handles: Vec<(InodeId, Weak<()>)>,
    next_inode: InodeId,
    /// Files a crash left torn (part of their unsynced writes survived), over all crashes.
    torn_files: u64,
}

impl NodeDisk {
    fn dir_exists(&self, dir: &Path) -> bool {
        is_root(dir) || self.dirs.contains(dir)
    }

    /// Whether `path`'s entry and the entries of all its ancestors are durable: only then does
    /// a crash keep it reachable.
    fn durably_reachable(&self, path: &Path) -> bool {
        let mut ancestors = path.ancestors().skip(1);
        ancestors.all(|dir| is_root(dir) || self.durable_dirs.contains(dir))
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if self.dir_exists(parent) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", parent.display()),
            ))
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.faults.fail_writes {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated disk full (fail_writes)",
            ))
        } else {
            Ok(())
        }
    }

    fn inode_of(&self, path: &Path) -> io::Result<InodeId> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file (simulated disk)"))
    }

    /// A handle of this boot on `inode`: keeps it alive while the handle (or a clone) is.
    fn open_handle(&mut self, inode: InodeId) -> Arc<()> {
        let alive = Arc::new(());
        self.handles.retain(|(_, handle)| handle.strong_count() > 0);
        self.handles.push((inode, Arc::downgrade(&alive)));
        alive
    }

    /// Forgets inodes that no name, current or durable, nor an open handle refers to.
    fn collect_garbage(&mut self) {
        self.handles.retain(|(_, handle)| handle.strong_count() > 0);
        let live: BTreeSet<InodeId> = self
            .names
            .values()
            .chain(self.durable_names.values())
            .copied()
            .chain(self.handles.iter().map(|(inode, _)| *inode))
            .collect();
        self.inodes.retain(|inode, _| live.contains(inode));
    }

    fn crash(&mut self, rand: &GlobalRng) {
        self.boot += 1;
        // Lost directory entries take their subtrees along. The parent test suffices for
        // directories because a lost ancestor fails it at the topmost lost level, and sorted
        // paths list parents before their children.
        let mut dirs = BTreeSet::new();
        for dir in &self.durable_dirs {
            if dir
                .parent()
                .is_some_and(|parent| is_root(parent) || dirs.contains(parent))
            {
                dirs.insert(dir.clone());
            }
        }
        self.dirs = dirs;
        self.durable_dirs = self.dirs.clone();
        let reachable =
            |path: &PathBuf| path.parent().is_some_and(|parent| self.dir_exists(parent));
        let names: BTreeMap<PathBuf, InodeId> = self
            .durable_names
            .iter()
            .filter(|(path, _)| reachable(path))
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        self.names = names;
        self.durable_names = self.names.clone();
        self.handles.clear();
        self.collect_garbage();
        let mut rand = rand.clone();
        for inode in self.inodes.values_mut() {
            let torn = if !inode.pending.is_empty()
                && self.faults.torn_write_probability > 0.0
                && rand.gen_bool(self.faults.torn_write_probability.min(1.0))
            {
                let surviving = rand.gen_range(0..inode.pending.len());
                let prefix_bytes_max = match &inode.pending[surviving] {
                    PendingOp::Write { bytes, .. } => bytes.len() as u64,
                    PendingOp::SetLen(_) => 1,
                };
                self.torn_files += 1;
                Some((surviving, rand.gen_range(0..=prefix_bytes_max)))
            } else {
                None
            };
            inode.crash(torn);
        }
    }
}

/// Whether `dir` is a root of the simulated namespace (`/`, or the empty path that relative paths
/// start from): always there, never created or lost.
fn is_root(dir: &Path) -> bool {
    dir.parent().is_none() || dir.as_os_str().is_empty()
}

/// Normalizes a path so `a/./b` and `a/b` name the same simulated file (no `..` resolution).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| !matches!(component, Component::CurDir))
        .collect()
}

/// The madsim plugin holding every node's disk. Disks survive restarts; a kill is a crash.
pub struct DiskSim {
    rand: GlobalRng,
    disks: Mutex<BTreeMap<NodeId, NodeDisk>>,
}

impl Simulator for DiskSim {
    fn new(rand: &GlobalRng, _time: &TimeHandle, _config: &madsim::Config) -> Self {
        DiskSim {
            rand: rand.clone(),
            disks: Mutex::new(BTreeMap::new()),
        }
    }

    fn reset_node(&self, id: NodeId) {
        if let Some(disk) = self.lock().get_mut(&id) {
            disk.crash(&self.rand);
        }
    }
}

impl DiskSim {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, NodeDisk>> {
        self.disks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_disk<T>(&self, node: NodeId, f: impl FnOnce(&mut NodeDisk) -> T) -> T {
        f(self.lock().entry(node).or_default())
    }

    pub(in crate::env) fn set_faults(&self, node: NodeId, faults: DiskFaults) {
        assert!(
            (0.0..=1.0).contains(&faults.torn_write_probability),
            "torn_write_probability {} is not a probability",
            faults.torn_write_probability
        );
        assert!(
            faults.latency_min <= faults.latency_max,
            "latency_min {:?} > latency_max {:?}",
            faults.latency_min,
            faults.latency_max
        );
        self.with_disk(node, |disk| disk.faults = faults);
    }

    /// Loses everything on `node`'s disk (a replaced drive): files, directories, pending
    /// writes. Its faults and plants stay; handles of the old boot are refused.
    pub(in crate::env) fn wipe(&self, node: NodeId) {
        self.with_disk(node, |disk| {
            *disk = NodeDisk {
                boot: disk.boot + 1,
                faults: disk.faults.clone(),
                plants: disk.plants,
                torn_files: disk.torn_files,
                ..NodeDisk::default()
            };
        });
    }

    pub(in crate::env) fn faults(&self, node: NodeId) -> DiskFaults {
        self.with_disk(node, |disk| disk.faults.clone())
    }

    pub(in crate::env) fn set_plants(&self, node: NodeId, plants: FsPlants) {
        self.with_disk(node, |disk| disk.plants = plants);
    }

    pub(in crate::env) fn plants(&self, node: NodeId) -> FsPlants {
        self.with_disk(node, |disk| disk.plants)
    }

    /// What `path` on `node` would hold after a crash that tears nothing, if it would exist.
    pub(in crate::env) fn durable_content(&self, node: NodeId, path: &Path) -> Option<Vec<u8>> {
        let path = normalize(path);
        self.with_disk(node, |disk| {
            if !disk.durably_reachable(&path) {
                return None;
            }
            let inode = disk.durable_names.get(&path)?;
            disk.inodes.get(inode).map(|inode| inode.durable.clone())
        })
    }

    /// Files the crashes of `node` left torn so far.
    pub(in crate::env) fn torn_files(&self, node: NodeId) -> u64 {
        self.with_disk(node, |disk| disk.torn_files)
    }

    /// Bytes held by `node`'s files that a crash would lose (pending writes).
    pub(in crate::env) fn pending_bytes(&self, node: NodeId) -> u64 {
        self.with_disk(node, |disk| {
            disk.inodes
                .values()
                .flat_map(|inode| inode.pending.iter())
                .map(|op| match op {
                    PendingOp::Write { bytes, .. } => bytes.len() as u64,
                    PendingOp::SetLen(_) => 0,
                })
                .sum()
        })
    }
}

/// The file API of the seam on the simulated disk of the current node.
pub(in crate::env) mod fs {
    use super::*;

    /// Waits the current node's disk latency and returns the plugin and the node.
    async fn enter() -> (std::sync::Arc<DiskSim>, NodeId) {
        let disk_sim = plugin::<DiskSim>();
        let node = madsim::plugin::node();
        let faults = disk_sim.faults(node);
        if faults.latency_max > Duration::ZERO {
            let min_nanos = faults.latency_min.as_nanos() as u64;
            let max_nanos = faults.latency_max.as_nanos() as u64;
            let delay_nanos = madsim::rand::thread_rng().gen_range(min_nanos..=max_nanos);
            tokio::time::sleep(Duration::from_nanos(delay_nanos)).await;
        }
        (disk_sim, node)
    }

    /// The bugs planted in the current node's file code.
    pub(in crate::env) fn plants() -> FsPlants {
        plugin::<DiskSim>().plants(madsim::plugin::node())
    }

    /// An open simulated file: an inode of one boot of one node.
    #[derive(Debug)]
    pub(in crate::env) struct File {
        node: NodeId,
        boot: u64,
        inode: InodeId,
        /// Keeps the inode alive after its name is removed (see `NodeDisk::handles`).
        _alive: Arc<()>,
    }

    impl File {
        pub(in crate::env) async fn create(path: &Path) -> io::Result<File> {
            let path = normalize(path);
            let (disk_sim, node) = enter().await;
            disk_sim.with_disk(node, |disk| {
                disk.check_writable()?;
                disk.check_parent(&path)?;
                if disk.dirs.contains(&path) {
                    return Err(io::Error::new(
                        io::ErrorKind::IsADirectory,
                        "is a directory (simulated disk)",
                    ));
                }
                let inode = match disk.names.get(&path) {
                    Some(&inode) => {
                        disk.inodes
                            .get_mut(&inode)
                            .expect("named inode exists")
                            .push(PendingOp::SetLen(0));
                        inode
                    }
                    None => {
                        let inode = disk.next_inode;
                        disk.next_inode += 1;
                        disk.inodes.insert(inode, Inode::default());
                        disk.names.insert(path, inode);
                        inode
                    }
                };
                Ok(File {
                    node,
                    boot: disk.boot,
                    inode,
                    _alive: disk.open_handle(inode),
                })
            })
        }

        pub(in crate::env) async fn open(path: &Path) -> io::Result<File> {
            let path = normalize(path);
            let (disk_sim, node) = enter().await;
            disk_sim.with_disk(node, |disk| {
                let inode = disk.inode_of(&path)?;
                Ok(File {
                    node,
                    boot: disk.boot,
                    inode,
                    _alive: disk.open_handle(inode),
                })
            })
        }

        /// Runs `f` on this file's inode, after the latency and the handle's checks.
        async fn with_inode<T>(
            &self,
            mutating: bool,
            f: impl FnOnce(&mut Inode, &DiskFaults) -> T,
        ) -> io::Result<T> {
            let (disk_sim, node) = enter().await;
            assert_eq!(
                node, self.node,
                "a simulated file handle of node {} used on node {node}",
                self.node
            );
            disk_sim.with_disk(node, |disk| {
                if disk.boot != self.boot {
                    return Err(io::Error::other(format!(
                        "stale file handle: node {node} crashed since it was opened"
                    )));
                }
                if mutating {
                    disk.check_writable()?;
                }
                let faults = disk.faults.clone();
                let inode = disk.inodes.get_mut(&self.inode).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "file was removed (simulated disk)")
                })?;
                Ok(f(inode, &faults))
            })
        }

        pub(in crate::env) async fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
            let bytes = bytes.to_vec();
            self.with_inode(true, |inode, _| {
                inode.push(PendingOp::Write { offset, bytes })
            })
            .await
        }

        pub(in crate::env) async fn append(&self, bytes: &[u8]) -> io::Result<u64> {
            let bytes = bytes.to_vec();
            self.with_inode(true, |inode, _| {
                let offset = inode.current.len() as u64;
                inode.push(PendingOp::Write { offset, bytes });
                offset
            })
            .await
        }

        pub(in crate::env) async fn read_all(&self) -> io::Result<Vec<u8>> {
            self.with_inode(false, |inode, _| inode.current.clone())
                .await
        }

        pub(in crate::env) async fn read_at(
            &self,
            offset: u64,
            len_bytes: usize,
        ) -> io::Result<Vec<u8>> {
            self.with_inode(false, |inode, _| {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(inode.current.len());
                let end = start.saturating_add(len_bytes).min(inode.current.len());
                inode.current[start..end].to_vec()
            })
            .await
        }

        pub(in crate::env) async fn len(&self) -> io::Result<u64> {
            self.with_inode(false, |inode, _| inode.current.len() as u64)
                .await
        }

        pub(in crate::env) async fn set_len(&self, len_bytes: u64) -> io::Result<()> {
            self.with_inode(true, |inode, _| inode.push(PendingOp::SetLen(len_bytes)))
                .await
        }

        pub(in crate::env) async fn sync(&self) -> io::Result<()> {
            self.with_inode(true, |inode, faults| {
                if !faults.lying_fsync {
                    inode.make_durable();
                }
            })
            .await
        }
    }

    pub(in crate::env) async fn read(path: &Path) -> io::Result<Vec<u8>> {
        let path = normalize(path);
        let (disk_sim, node) = enter().await;
        disk_sim.with_disk(node, |disk| {
            let inode = disk.inode_of(&path)?;
            Ok(disk.inodes[&inode].current.clone())
        })
    }

    pub(in crate::env) async fn rename(from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (normalize(from), normalize(to));
        let (disk_sim, node) = enter().await;
        disk_sim.with_disk(node, |disk| {
            disk.check_writable()?;
            disk.check_parent(&to)?;
            if disk.dirs.contains(&from) || disk.dirs.contains(&to) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "renaming directories is not modelled (simulated disk)",
                ));
            }
            let inode = disk.inode_of(&from)?;
            disk.names.remove(&from);
            disk.names.insert(to, inode);
            disk.collect_garbage();
            Ok(())
        })
    }

    pub(in crate::env) async fn remove_file(path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let (disk_sim, node) = enter().await;
        disk_sim.with_disk(node, |disk| {
            disk.check_writable()?;
            disk.inode_of(&path)?;
            disk.names.remove(&path);
            disk.collect_garbage();
            Ok(())
        })
    }

    pub(in crate::env) async fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
        let dir = normalize(dir);
        let (disk_sim, node) = enter().await;
        disk_sim.with_disk(node, |disk| {
            if !disk.dir_exists(&dir) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such directory (simulated disk)",
                ));
            }
            let children: BTreeSet<String> = disk
                .names
                .keys()
                .chain(disk.dirs.iter())
                .filter(|path| path.parent() == Some(dir.as_path()))
                .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
                .collect();
            Ok(children.into_iter().collect())
        })
    }

    pub(in crate::env) async fn create_dir_all(dir: &Path) -> io::Result<()> {
        let dir = normalize(dir);
        let (disk_sim, node) = enter().await;
        disk_sim.with_disk(node, |disk| {
            disk.check_writable()?;
            for ancestor in dir.ancestors() {
                if is_root(ancestor) {
                    continue;
                }
                if disk.names.contains_key(ancestor) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a file (simulated disk)", ancestor.display()),
                    ));
                }
                disk.dirs.insert(ancestor.to_path_buf());
            }
            Ok(())
        })
    }

    pub(in crate::env) async fn sync_dir(dir: &Path) -> io::Result<()> {
        let dir = normalize(dir);
        let (disk_sim, node) = enter().await;
        disk_sim.with_disk(node, |disk| {
            disk.check_writable()?;
            if !disk.dir_exists(&dir) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such directory (simulated disk)",
                ));
            }
            if disk.faults.lying_fsync {
                return Ok(());
            }
            let in_dir = |path: &PathBuf| path.parent() == Some(dir.as_path());
            disk.durable_names.retain(|path, _| !in_dir(path));
            let current: Vec<(PathBuf, InodeId)> = disk
                .names
                .iter()
                .filter(|(path, _)| in_dir(path))
                .map(|(path, inode)| (path.clone(), *inode))
                .collect();
            disk.durable_names.extend(current);
            disk.durable_dirs.retain(|path| !in_dir(path));
            let current_dirs: Vec<PathBuf> = disk
                .dirs
                .iter()
                .filter(|path| in_dir(path))
                .cloned()
                .collect();
            disk.durable_dirs.extend(current_dirs);
            disk.collect_garbage();
            Ok(())
        })
    }

    pub(in crate::env) async fn exists(path: &Path) -> io::Result<bool> {
        let path = normalize(path);
        let (disk_sim, node) = enter().await;
        Ok(disk_sim.with_disk(node, |disk| {
            disk.names.contains_key(&path) || disk.dir_exists(&path)
        }))
    }
}
