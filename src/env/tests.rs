//! Tests of the seam that run in both builds (`cargo test --lib env::` and `cargo sim --lib env::`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand_core::RngCore;

use super::testing::run_with_dir;
use super::*;

#[test]
fn instant_arithmetic_saturates_and_checks() {
    let start = Instant::from_nanos(1_000);
    let later = start + Duration::from_nanos(500);
    assert_eq!(later.as_nanos(), 1_500);
    assert_eq!(later.duration_since(start), Duration::from_nanos(500));
    assert_eq!(start.duration_since(later), Duration::ZERO);
    assert_eq!(later - start, Duration::from_nanos(500));
    assert_eq!(start.checked_duration_since(later), None);
    assert_eq!(start.checked_sub(Duration::from_nanos(1_001)), None);
    assert_eq!(
        start.checked_sub(Duration::from_nanos(1_000)),
        Some(Instant::from_nanos(0))
    );
    assert_eq!(
        Instant::from_nanos(u64::MAX).checked_add(Duration::from_nanos(1)),
        None
    );
    let mut moving = start;
    moving += Duration::from_micros(1);
    assert!(moving > start);
}

#[test]
#[should_panic(expected = "instant underflow")]
fn instant_subtraction_below_epoch_panics_loudly() {
    let _ = Instant::from_nanos(5) - Duration::from_nanos(6);
}

#[test]
fn sleep_advances_the_clock_and_timeout_fires() {
    run_with_dir(|_dir| async {
        let before = now();
        assert!(
            before.checked_sub(Duration::from_secs(3600)).is_some(),
            "the clock starts far enough from its epoch to look back an hour: {before:?}"
        );
        sleep(Duration::from_millis(20)).await;
        let slept = now().duration_since(before);
        assert!(slept >= Duration::from_millis(20), "slept only {slept:?}");

        let late = timeout(Duration::from_millis(10), sleep(Duration::from_secs(3600))).await;
        assert_eq!(late, Err(Elapsed));
        let on_time = timeout(Duration::from_secs(3600), async { 7 }).await;
        assert_eq!(on_time, Ok(7));
        assert!(
            unix_time_ms() > 1_600_000_000_000,
            "wall clock is after 2020"
        );
    });
}

#[test]
fn spawned_tasks_run_and_return() {
    run_with_dir(|_dir| async {
        let handle = spawn(async { 40 + 2 });
        assert_eq!(handle.await.expect("task completes"), 42);
    });
}

#[test]
fn rng_generators_differ() {
    run_with_dir(|_dir| async {
        let (mut first, mut second) = (rng(), rng());
        let draws: Vec<u64> = (0..4).map(|_| first.next_u64()).collect();
        let other: Vec<u64> = (0..4).map(|_| second.next_u64()).collect();
        assert_ne!(draws, other, "two generators drew the same numbers");
    });
}

#[test]
fn files_read_back_what_was_written() {
    run_with_dir(|dir| async move {
        let path = dir.join("data.bin");
        assert!(!fs::exists(&path).await.unwrap());
        let missing = fs::File::open(&path).await.unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound, "{missing}");

        let file = fs::File::create(&path).await.unwrap();
        assert_eq!(file.append(b"hello").await.unwrap(), 0);
        assert_eq!(file.append(b" world").await.unwrap(), 5);
        file.write_at(0, b"J").await.unwrap();
        file.sync().await.unwrap();
        assert_eq!(file.read_all().await.unwrap(), b"Jello world");
        assert_eq!(file.len().await.unwrap(), 11);
        file.set_len(5).await.unwrap();
        assert_eq!(fs::read(&path).await.unwrap(), b"Jello");
        file.write_at(7, b"!").await.unwrap();
        assert_eq!(file.read_all().await.unwrap(), b"Jello\0\0!");
        drop(file);

        let reopened = fs::File::open(&path).await.unwrap();
        assert_eq!(reopened.read_all().await.unwrap(), b"Jello\0\0!");
        let truncated = fs::File::create(&path).await.unwrap();
        assert!(truncated.is_empty().await.unwrap());
    });
}

#[test]
fn read_at_returns_the_range_and_stops_short_only_at_the_end() {
    run_with_dir(|dir| async move {
        let file = fs::File::create(dir.join("ranged.bin")).await.unwrap();
        file.append(b"0123456789").await.unwrap();
        assert_eq!(file.read_at(2, 3).await.unwrap(), b"234");
        assert_eq!(file.read_at(0, 10).await.unwrap(), b"0123456789");
        assert_eq!(file.read_at(7, 100).await.unwrap(), b"789");
        assert_eq!(file.read_at(10, 4).await.unwrap(), b"");
        assert_eq!(file.read_at(u64::MAX, 4).await.unwrap(), b"");
    });
}

#[test]
fn directory_operations_list_sorted_names() {
    run_with_dir(|dir| async move {
        let nested = dir.join("a").join("b");
        fs::create_dir_all(&nested).await.unwrap();
        fs::create_dir_all(&nested).await.unwrap();
        for name in ["zeta", "alpha", "mid"] {
            fs::File::create(nested.join(name)).await.unwrap();
        }
        fs::sync_dir(&nested).await.unwrap();
        assert_eq!(
            fs::list_dir(&nested).await.unwrap(),
            vec!["alpha", "mid", "zeta"]
        );
        assert_eq!(fs::list_dir(&dir).await.unwrap(), vec!["a"]);

        fs::rename(nested.join("alpha"), nested.join("omega"))
            .await
            .unwrap();
        fs::remove_file(nested.join("mid")).await.unwrap();
        assert_eq!(fs::list_dir(&nested).await.unwrap(), vec!["omega", "zeta"]);
        assert!(fs::exists(nested.join("omega")).await.unwrap());
        assert!(!fs::exists(nested.join("mid")).await.unwrap());
        let error = fs::remove_file(nested.join("mid")).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        assert!(
            error.to_string().contains("mid"),
            "error names the path: {error}"
        );
    });
}

#[test]
fn a_removed_file_stays_readable_through_a_handle_opened_before() {
    // POSIX: the leader streams a snapshot file that a newer snapshot removed meanwhile.
    run_with_dir(|dir| async move {
        let path = dir.join("snapshot");
        let file = fs::File::create(&path).await.unwrap();
        file.write_at(0, b"old state").await.unwrap();
        file.sync().await.unwrap();
        let reader = fs::File::open(&path).await.unwrap();
        drop(file);
        fs::remove_file(&path).await.unwrap();
        // Another file under the same name, and a collection of the unnamed inodes.
        fs::File::create(&path).await.unwrap();
        fs::remove_file(&path).await.unwrap();
        assert!(!fs::exists(&path).await.unwrap());
        assert_eq!(reader.len().await.unwrap(), 9);
        assert_eq!(reader.read_at(4, 5).await.unwrap(), b"state");
    });
}

#[test]
fn create_dir_all_below_a_file_fails_naming_the_path() {
    run_with_dir(|dir| async move {
        let file_path = dir.join("plain");
        fs::write_atomic(&file_path, b"x").await.unwrap();
        let error = fs::create_dir_all(file_path.join("sub")).await.unwrap_err();
        assert!(error.to_string().contains("plain"), "{error}");
        assert_eq!(fs::read(&file_path).await.unwrap(), b"x");
    });
}

#[test]
fn write_atomic_replaces_content_and_leaves_no_temp_file() {
    run_with_dir(|dir| async move {
        let path = dir.join("state");
        fs::write_atomic(&path, b"first").await.unwrap();
        fs::write_atomic(&path, b"second").await.unwrap();
        assert_eq!(fs::read(&path).await.unwrap(), b"second");
        assert_eq!(fs::list_dir(&dir).await.unwrap(), vec!["state"]);
    });
}

/// A hyper http1 server and client talking over the seam's TCP, executor and timer.
#[test]
fn hyper_round_trip_over_the_seam() {
    run_with_dir(|_dir| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests_served = Arc::new(AtomicUsize::new(0));
        let served = Arc::clone(&requests_served);
        let server = spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let served = Arc::clone(&served);
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let reply = format!("{path}:{}", String::from_utf8_lossy(&body));
                        served.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(reply))))
                    }
                },
            );
            // The client hangs up at the end; the simulated stream may report that as a reset,
            // so the connection's result is not the point: the answers are.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(HyperTimer)
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });

        let stream = TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
        let executor = HyperExecutor;
        hyper::rt::Executor::execute(&executor, async move {
            let _ = connection.await;
        });
        for round in 0..3 {
            let request = hyper::Request::post(format!("http://{address}/echo"))
                .body(Full::new(Bytes::from(format!("ping {round}"))))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), hyper::StatusCode::OK);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("/echo:ping {round}").as_bytes());
        }
        drop(sender);
        timeout(Duration::from_secs(10), server)
            .await
            .expect("server ends once the client hangs up")
            .unwrap();
        assert_eq!(requests_served.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn split_stream_halves_carry_data_both_ways() {
    run_with_dir(|_dir| async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let echo = spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut reader, mut writer) = split(stream);
            let mut buffer = [0u8; 4];
            reader.read_exact(&mut buffer).await.unwrap();
            writer.write_all(&buffer).await.unwrap();
            writer.flush().await.unwrap();
        });
        let stream = TcpStream::connect(address).await.unwrap();
        let (mut reader, mut writer) = split(stream);
        writer.write_all(b"ping").await.unwrap();
        writer.flush().await.unwrap();
        let mut buffer = [0u8; 4];
        reader.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"ping");
        echo.await.unwrap();
    });
}
