//! The repository root holds only the entries listed in `.ci/root-entries` (the same check as
//! the first step of `.ci/run`), so a stray file (a redirect target named `0`, a log) is seen
//! locally before it is committed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The top-level names of the paths `git ls-files ARGS` prints, or None without git.
fn top_level(repo: &Path, args: &[&str]) -> Option<BTreeSet<String>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-files", "-z"])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let names = out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let first = p.split(|&b| b == b'/').next().unwrap_or(p);
            String::from_utf8_lossy(first).into_owned()
        })
        .collect();
    Some(names)
}

#[test]
fn repository_root_holds_only_the_listed_entries() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let list = std::fs::read_to_string(repo.join(".ci/root-entries")).expect(".ci/root-entries");
    let expected: BTreeSet<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let (Some(tracked), Some(untracked)) = (
        top_level(repo, &[]),
        top_level(repo, &["--others", "--exclude-standard"]),
    ) else {
        println!(
            "SKIPPED repository_root_holds_only_the_listed_entries: not a git checkout (or no git)"
        );
        return;
    };
    let unexpected: Vec<&String> = tracked
        .iter()
        .chain(untracked.iter())
        .filter(|name| !expected.contains(name.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected at the repository root (remove, or add to .ci/root-entries): {unexpected:?}"
    );
}
