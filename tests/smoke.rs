//! The binary starts and prints its usage.

mod common;

#[test]
fn help_lists_every_command() {
    let out = std::process::Command::new(common::bin())
        .arg("help")
        .output()
        .expect("run binary");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "worker", "proxy", "check-config", "status"] {
        assert!(
            text.contains(&format!("  {cmd}")),
            "usage lacks {cmd}: {text}"
        );
    }
}

#[test]
fn unknown_command_exits_2() {
    let out = std::process::Command::new(common::bin())
        .arg("frobnicate")
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn usage_error_under_journald_is_one_err_line() {
    let out = std::process::Command::new(common::bin())
        .args(["run", "--bogus", "x"])
        .env("JOURNAL_STREAM", "8:1234")
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("<3>"), "{err}");
    assert!(
        lines[0].contains("event=usage") && lines[0].contains("--bogus"),
        "{err}"
    );
}
