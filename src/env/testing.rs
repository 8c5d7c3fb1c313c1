//! Runs an async test in whichever backend this build has, so one test body checks production
//! (tokio, real files in a temporary directory) and simulation (a madsim runtime with the seam's
//! plugins, one node, the simulated disk).

use std::future::Future;
use std::path::PathBuf;

/// Runs `test(dir)` to completion, where `dir` is an empty directory that exists.
#[cfg(not(madsim))]
pub(crate) fn run_with_dir<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(test(dir.path().to_path_buf()));
}

/// Runs `test(dir)` to completion, where `dir` is an empty directory that exists.
#[cfg(madsim)]
pub(crate) fn run_with_dir<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = simulation_runtime();
    let node = runtime
        .create_node()
        .name("test")
        .ip("10.0.0.1".parse().expect("an IP address"))
        .build();
    runtime.block_on(async move {
        node.spawn(async move {
            let dir = PathBuf::from("/data/test");
            crate::env::fs::create_dir_all(&dir)
                .await
                .expect("create the test directory");
            test(dir).await;
        })
        .await
        .expect("the test task completes");
    });
}

/// A madsim runtime with the seam's plugins, seeded from `MADSIM_TEST_SEED` (default 1).
#[cfg(madsim)]
pub(crate) fn simulation_runtime() -> madsim::runtime::Runtime {
    let seed = std::env::var("MADSIM_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(1);
    simulation_runtime_with_seed(seed)
}

/// A madsim runtime with the seam's plugins and the given seed.
#[cfg(madsim)]
pub(crate) fn simulation_runtime_with_seed(seed: u64) -> madsim::runtime::Runtime {
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    crate::env::sim_control::install(&runtime);
    runtime
}
