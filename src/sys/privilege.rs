//! Least privilege: the account LB children run as, the drop a forked LB child makes before
//! it reads a byte from a client, the uid worker containers run as, and the directories a
//! database may not live in (its directory is bind-mounted into every worker container).
//!
//! The mechanism (why: docs/ARCHITECTURE.md, "Least privilege"): the supervisor keeps what it
//! needs (the docker group, CAP_NET_BIND_SERVICE, CAP_SETGID under the unit; everything when
//! run as root by hand); an LB child, right after fork, drops its supplementary groups, its
//! uid/gid when the supervisor is root (to `user`), every capability (effective, permitted,
//! inheritable, ambient, and the bounding set where allowed) and sets no_new_privs, so no
//! exec can give any of it back.

use std::path::{Component, Path, PathBuf};

/// A user account from /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// The account `name` in a passwd file's text (`name:pw:uid:gid:gecos:home:shell`).
pub fn find_in_passwd(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let uid = f.nth(1)?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        Some(Account {
            name: name.to_string(),
            uid,
            gid,
        })
    })
}

/// The unprivileged account `name` from /etc/passwd (read directly: a static binary has no
/// NSS modules). Err names the problem: not found, or root.
pub fn lookup_user(name: &str) -> Result<Account, String> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd to find {name:?}: {e}"))?;
    let account =
        find_in_passwd(&passwd, name).ok_or_else(|| format!("no user {name:?} in /etc/passwd"))?;
    if account.uid == 0 || account.gid == 0 {
        return Err(format!(
            "must be an unprivileged user, got {name:?} (uid {}, gid {})",
            account.uid, account.gid
        ));
    }
    Ok(account)
}

/// The account LB children switch to: `user` when this process is root, none otherwise (a
/// non-root supervisor's children keep its uid and drop the rest).
pub fn child_account(user: &Account) -> Option<Account> {
    nix::unistd::geteuid().is_root().then(|| user.clone())
}

/// What an LB child gave up, for its start log line.
#[derive(Debug, Default)]
pub struct Dropped {
    /// Steps that could not be taken and why (e.g. supplementary groups kept: no CAP_SETGID).
    pub kept: Vec<String>,
}

/// Drops everything an LB child does not need; it serves sockets it already holds. Called in
/// the child after fork, single-threaded. `to`: the account to become (the supervisor is
/// root), or None to keep the uid. Err when a step that must work failed: the child then
/// exits rather than serve with privileges.
pub fn drop_in_child(to: Option<&Account>) -> Result<Dropped, String> {
    use nix::unistd::{Gid, Uid, getgroups, setgroups, setresgid, setresuid};
    let mut dropped = Dropped::default();
    match setgroups(&[]) {
        Ok(()) => {}
        // Without CAP_SETGID (a non-root supervisor started by hand) the groups stay.
        Err(nix::errno::Errno::EPERM) if to.is_none() => {
            let gid = nix::unistd::getgid();
            let others: Vec<String> = getgroups()
                .unwrap_or_default()
                .into_iter()
                .filter(|g| *g != gid)
                .map(|g| g.to_string())
                .collect();
            if !others.is_empty() {
                dropped.kept.push(format!(
                    "supplementary groups {} (no CAP_SETGID)",
                    others.join(",")
                ));
            }
        }
        Err(e) => return Err(format!("setgroups([]): {e}")),
    }
    drop_bounding_set(to.is_some())?;
    // Ambient capabilities would survive an exec; clear them (EINVAL: kernel without them).
    // SAFETY: prctl with integer arguments only.
    unsafe {
        nix::libc::prctl(
            nix::libc::PR_CAP_AMBIENT,
            nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    if let Some(a) = to {
        let (uid, gid) = (Uid::from_raw(a.uid), Gid::from_raw(a.gid));
        setresgid(gid, gid, gid).map_err(|e| format!("setresgid({}): {e}", a.gid))?;
        setresuid(uid, uid, uid).map_err(|e| format!("setresuid({}): {e}", a.uid))?;
    }
    clear_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    if to.is_some() && setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        return Err("root could be regained after the drop".into());
    }
    Ok(dropped)
}

/// Removes every capability from the bounding set. Needs CAP_SETPCAP: root has it; a
/// non-root child does not, and needs none here (with no_new_privs and empty sets no exec can
/// raise a capability), so EPERM is fine unless `must` (root).
fn drop_bounding_set(must: bool) -> Result<(), String> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc == 0 {
            continue;
        }
        match nix::errno::Errno::last() {
            // Past the last capability this kernel knows.
            nix::errno::Errno::EINVAL => return Ok(()),
            // Not worth a warning: see above.
            nix::errno::Errno::EPERM if !must => return Ok(()),
            e => return Err(format!("PR_CAPBSET_DROP({cap}): {e}")),
        }
    }
    Ok(())
}

/// `capset`: effective, permitted and inheritable all empty.
fn clear_capabilities() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: the kernel reads one header and two data structs (version 3), both live here.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capset,
            &mut header as *mut Header,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!("capset(0): {}", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Makes `cmd` start without the ambient capabilities this process may hold (the unit grants
/// CAP_NET_BIND_SERVICE and CAP_SETGID as ambient so the supervisor has them): worker
/// processes and the docker CLI get none.
pub fn no_ambient_caps_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only prctl runs (async-signal-safe); EINVAL (a kernel
    // without ambient capabilities) leaves nothing to clear.
    unsafe {
        cmd.pre_exec(|| {
            nix::libc::prctl(
                nix::libc::PR_CAP_AMBIENT,
                nix::libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
}

/// Directories a database may not live in directly: its directory is bind-mounted into every
/// worker container, so it must be one of its own.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/etc", "/var", "/run", "/tmp", "/var/tmp", "/var/lib", "/var/log", "/var/run", "/home",
    "/root", "/opt", "/srv", "/mnt", "/media",
];
/// Trees a database may not live anywhere in (system files, pseudo file systems).
const SYSTEM_TREES: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/dev", "/proc",
    "/sys",
];

/// `path` with `.` and `..` resolved lexically (symlinks are the start's concern: it
/// canonicalizes the directory and checks again).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Err when `dir` (absolute) is `/` or a system directory: the database's directory would
/// expose it to every worker container. The message says what to do instead.
pub fn check_database_dir(dir: &Path) -> Result<(), String> {
    let dir = normalize(dir);
    let s = dir.to_string_lossy();
    let system = SYSTEM_DIRS.contains(&s.as_ref())
        || SYSTEM_TREES
            .iter()
            .any(|t| s == *t || s.starts_with(&format!("{t}/")));
    if system {
        return Err(format!(
            "the database's directory {s} is a system directory, and it is bind-mounted into \
             every worker container: give the database a directory of its own, e.g. \
             /var/lib/goloadbalancer/worker-stats.db"
        ));
    }
    Ok(())
}

/// The uid:gid worker containers run as, never root, and whether the database directory must
/// first be handed to it. A non-root supervisor: its own ids (the directory is its own). A
/// root supervisor: the directory's owner when that is not root; else `user`, when the
/// directory holds nothing but the database's own files (it is then chowned to `user`).
pub fn container_ids(
    supervisor: (u32, u32),
    dir_owner: (u32, u32),
    dir_holds_only_the_database: bool,
    user: &Account,
) -> Result<((u32, u32), bool), String> {
    if supervisor.0 != 0 {
        return Ok((supervisor, false));
    }
    if dir_owner.0 != 0 {
        return Ok((dir_owner, false));
    }
    if dir_holds_only_the_database {
        return Ok(((user.uid, user.gid), true));
    }
    Err(format!(
        "the database's directory belongs to root and holds other files; worker containers \
         never run as root: give the database a directory of its own (it is then handed to \
         user {:?}), or chown the directory to the user the workers should run as",
        user.name
    ))
}

/// The database's own files in its directory: the file, and SQLite's `-wal`, `-shm`, `-journal`.
fn database_files(db: &Path) -> Vec<PathBuf> {
    let mut files = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

/// Makes the database usable by worker containers and returns the uid:gid they run as (see
/// [`container_ids`]). When the supervisor is root, the database's files (created by it) are
/// chowned to those ids, and a directory of the database's own that belongs to root is handed
/// over too (logged). `db` is absolute with a canonical directory.
pub fn prepare_container_database(db: &Path, user: &Account) -> Result<(u32, u32), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = db.parent().unwrap_or(Path::new("/"));
    check_database_dir(dir)?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let own = database_files(db);
    let only_database = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .all(|e| e.is_ok_and(|e| own.contains(&e.path())));
    let me = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let (ids, hand_over) = container_ids(me, (meta.uid(), meta.gid()), only_database, user)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if me.0 != 0 {
        return Ok(ids);
    }
    let chown = |p: &Path| {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(ids.0)),
            Some(nix::unistd::Gid::from_raw(ids.1)),
        )
        .map_err(|e| format!("chown {} {}:{}: {e}", p.display(), ids.0, ids.1))
    };
    if hand_over {
        chown(dir)?;
        crate::info!(
            "database_dir_handed_over",
            "dir={} uid={} gid={} user={}",
            crate::sys::log::quote(&dir.display().to_string()),
            ids.0,
            ids.1,
            user.name
        );
    }
    for file in own.iter().filter(|f| f.exists()) {
        chown(file)?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken:x:notanumber:5::/:/bin/false\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn accounts_come_from_passwd_lines() {
        assert_eq!(
            find_in_passwd(PASSWD, "nobody"),
            Some(Account {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(find_in_passwd(PASSWD, "daemon").map(|a| a.uid), Some(1));
        assert_eq!(find_in_passwd(PASSWD, "broken"), None);
        assert_eq!(find_in_passwd(PASSWD, "nobod"), None);
        assert_eq!(find_in_passwd(PASSWD, ""), None);
    }

    #[test]
    fn lookup_refuses_root_and_unknown_users() {
        assert!(lookup_user("root").unwrap_err().contains("unprivileged"));
        assert!(
            lookup_user("no-such-user-glb")
                .unwrap_err()
                .contains("no user")
        );
    }

    #[test]
    fn system_directories_are_refused() {
        for dir in [
            "/",
            "/etc",
            "/var",
            "/run",
            "/tmp",
            "/usr",
            "/usr/local/lib",
            "/lib",
            "/lib64",
            "/proc/self",
            "/sys/fs",
            "/dev/shm",
            "/boot",
            "/var/lib/..",
            "/srv/glb/../../etc",
        ] {
            assert!(check_database_dir(Path::new(dir)).is_err(), "{dir}");
        }
        for dir in [
            "/var/lib/goloadbalancer",
            "/srv/glb",
            "/tmp/glb-test-1",
            "/home/alice/glb",
            "/library",
            "/etc/goloadbalancer",
        ] {
            assert_eq!(check_database_dir(Path::new(dir)), Ok(()), "{dir}");
        }
    }

    #[test]
    fn containers_never_run_as_root() {
        let nobody = Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        // A non-root supervisor: its own ids.
        assert_eq!(
            container_ids((1000, 1000), (1000, 1000), false, &nobody),
            Ok(((1000, 1000), false))
        );
        // Root: the directory's owner, else `user` for a directory of its own.
        assert_eq!(
            container_ids((0, 0), (999, 998), false, &nobody),
            Ok(((999, 998), false))
        );
        assert_eq!(
            container_ids((0, 0), (0, 0), true, &nobody),
            Ok(((65534, 65534), true))
        );
        assert!(container_ids((0, 0), (0, 0), false, &nobody).is_err());
    }
}
