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
