use super::*;

fn settings(
    mode: AccessLogMode,
    format: AccessLogFormat,
    path: Option<PathBuf>,
) -> AccessLogSettings {
    AccessLogSettings {
        mode,
        format,
        sample: 1,
        path,
    }
}

fn record<'a>(id: &'a RequestId) -> AccessRecord<'a> {
    AccessRecord {
        client: "127.0.0.1:40000".parse().unwrap(),
        method: b"GET",
        target: b"/api/v1/hello?a=b",
        version: Some(1),
        status: 502,
        worker: "w-1",
        bytes_in: 78,
        bytes_out: 160,
        queued: None,
        connect: Some(Duration::from_millis(2)),
        response_head: Some(Duration::from_millis(30)),
        total: Duration::from_millis(33),
        retries: 1,
        request_id: Some(id),
        termination: Termination::WorkerBroke,
        phase: Phase::ResponseHead,
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glb-access-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("access.log")
}

#[test]
fn key_value_line_has_every_field() {
    let id = RequestId::from_bits(0xabc);
    let mut out = line::LineBuf::new();
    line::key_value(
        &mut out,
        "role=lb.0 level=info event=access",
        &line::time_text(Duration::from_millis(1_700_000_000_123)),
        &record(&id),
    );
    let line = String::from_utf8(out.as_bytes().to_vec()).unwrap();
    assert!(
        line.starts_with("role=lb.0 level=info event=access time=2023-11-14T22:13:20.123Z "),
        "{line}"
    );
    for field in [
        "client=127.0.0.1:40000",
        "method=\"GET\"",
        "target=\"/api/v1/hello?a=b\"",
        "version=HTTP/1.1",
        "status=502",
        "worker=w-1",
        "bytes_in=78",
        "bytes_out=160",
        "queued_ms=-",
        "connect_ms=2",
        "response_ms=30",
        "total_ms=33",
        "retries=1",
        "request_id=00000000000000000000000000000abc",
        "termination=worker_broke",
        "phase=response_head",
    ] {
        assert!(
            line.split(' ').any(|f| f == field),
            "{field} missing in {line}"
        );
    }
}

#[test]
fn json_line_parses_with_the_same_fields() {
    let id = RequestId::from_client(b"client-7").unwrap();
    let mut out = line::LineBuf::new();
    line::json(&mut out, &line::time_text(Duration::ZERO), &record(&id));
    let line = String::from_utf8(out.as_bytes().to_vec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
    assert_eq!(v["status"], 502);
    assert_eq!(v["worker"], "w-1");
    assert_eq!(v["queued_ms"], serde_json::Value::Null);
    assert_eq!(v["total_ms"], 33);
    assert_eq!(v["request_id"], "client-7");
    assert_eq!(v["termination"], "worker_broke");
    assert_eq!(v["phase"], "response_head");
}

#[test]
fn targets_are_escaped_and_cut() {
    let mut out = line::LineBuf::new();
    line::escaped(&mut out, b"/a b\"c\\d\x01\xff", line::KV_ESCAPE);
    assert_eq!(out.as_bytes(), b"/a\\x20b\\x22c\\x5cd\\x01\\xff");
    let mut long = line::LineBuf::new();
    line::escaped(&mut long, &[b'a'; MAX_LOGGED_TARGET + 10], line::KV_ESCAPE);
    assert_eq!(long.as_bytes().len(), MAX_LOGGED_TARGET + 3);
    assert!(long.as_bytes().ends_with(b"..."));
}

#[test]
fn modes_choose_lines() {
    let now = Instant::now();
    let path = temp_path("modes");
    let mut off = AccessLog::open(
        settings(
            AccessLogMode::Off,
            AccessLogFormat::KeyValue,
            Some(path.clone()),
        ),
        now,
    )
    .unwrap();
    assert!(!off.wants(true));
    let mut errors = AccessLog::open(
        settings(
            AccessLogMode::Errors,
            AccessLogFormat::KeyValue,
            Some(path.clone()),
        ),
        now,
    )
    .unwrap();
    assert!(errors.wants(true) && !errors.wants(false));
    let mut s = settings(
        AccessLogMode::All,
        AccessLogFormat::KeyValue,
        Some(path.clone()),
    );
    s.sample = 10;
    let mut sampled = AccessLog::open(s, now).unwrap();
    let kept = (0..100).filter(|_| sampled.wants(false)).count();
    assert_eq!(kept, 10);
    assert!(sampled.wants(true));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn lines_are_batched_until_the_tick_and_reopened_after_a_rename() {
    let now = Instant::now();
    let path = temp_path("reopen");
    let mut log = AccessLog::open(
        settings(
            AccessLogMode::All,
            AccessLogFormat::KeyValue,
            Some(path.clone()),
        ),
        now,
    )
    .unwrap();
    let id = RequestId::generate();
    log.record(&record(&id), now);
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        0,
        "written before its tick"
    );
    log.tick(now + FLUSH_EVERY / 2);
    assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    log.tick(now + FLUSH_EVERY);
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(first.lines().count(), 1);
    assert!(first.contains(id.as_str()));

    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen(now).unwrap();
    log.record(&record(&id), now);
    log.flush(now);
    assert_eq!(std::fs::read_to_string(&rotated).unwrap(), first);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    assert_eq!(log.dropped(), 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_full_batch_drops_and_counts_instead_of_growing() {
    let now = Instant::now();
    // /dev/full: every write fails with ENOSPC, as a full disk does.
    let mut log = AccessLog::open(
        settings(
            AccessLogMode::All,
            AccessLogFormat::KeyValue,
            Some(PathBuf::from("/dev/full")),
        ),
        now,
    )
    .unwrap();
    let id = RequestId::generate();
    for _ in 0..2_000 {
        log.record(&record(&id), now);
        assert!(log.pending.len() < MAX_PENDING + 1024);
    }
    log.flush(now);
    assert!(log.pending.is_empty());
    assert_eq!(log.dropped(), 2_000);
}

#[test]
fn json_line_with_quotes_and_control_bytes_still_parses() {
    let id = RequestId::from_client(b"q\"id").unwrap();
    let mut r = record(&id);
    r.target = b"/a\"b\\c\x01d e";
    let mut out = line::LineBuf::new();
    line::json(&mut out, &line::time_text(Duration::ZERO), &r);
    let line = String::from_utf8(out.as_bytes().to_vec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["target"], "/a\"b\\c\u{1}d e");
    assert_eq!(v["request_id"], "q\"id");
}

#[test]
fn time_text_matches_the_calendar() {
    // 2024-02-29T23:59:59.999Z: a leap day, the last millisecond.
    let t = line::time_text(Duration::from_millis(1_709_251_199_999));
    assert_eq!(&t, b"2024-02-29T23:59:59.999Z");
}

#[test]
fn ipv6_clients_are_written_too() {
    let id = RequestId::from_bits(1);
    let mut r = record(&id);
    r.client = "[::1]:8080".parse().unwrap();
    let mut out = line::LineBuf::new();
    line::key_value(&mut out, "p", b"t", &r);
    let text = String::from_utf8(out.as_bytes().to_vec()).unwrap();
    assert!(text.contains(" client=[::1]:8080 "), "{text}");
}

#[test]
fn numbers_are_spelled_exactly() {
    for n in [
        0u64,
        5,
        9,
        10,
        42,
        99,
        100,
        101,
        999,
        1000,
        65_535,
        1_234_567,
        u64::MAX,
    ] {
        let id = RequestId::from_bits(1);
        let mut r = record(&id);
        r.bytes_in = n;
        let mut out = line::LineBuf::new();
        line::key_value(&mut out, "p", b"t", &r);
        let text = String::from_utf8(out.as_bytes().to_vec()).unwrap();
        assert!(text.contains(&format!(" bytes_in={n} ")), "{n}: {text}");
    }
}

#[test]
fn a_client_id_with_a_quote_is_still_escaped() {
    let id = RequestId::from_client(b"a\"b").unwrap();
    assert!(!id.is_plain());
    let mut out = line::LineBuf::new();
    line::key_value(&mut out, "p", b"t", &record(&id));
    let text = String::from_utf8(out.as_bytes().to_vec()).unwrap();
    assert!(text.contains(" request_id=a\\x22b "), "{text}");
}
