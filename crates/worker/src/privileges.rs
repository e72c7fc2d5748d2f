//! Dropping root before serving: a worker parses untrusted HTTP, so it must not
//! keep the master's privileges.

use nix::unistd::{self, Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("user `{0}` does not exist")]
    NoSuchUser(String),
    #[error("group `{0}` does not exist")]
    NoSuchGroup(String),
    #[error("refusing to run workers as root: `{0}` has uid 0")]
    TargetIsRoot(String),
    #[error("{what} failed: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    #[error("still able to regain root after dropping privileges")]
    NotDropped,
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> PrivilegeError {
    move |source| PrivilegeError::Sys { what, source }
}

/// What happened, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Dropped {
        uid: u32,
        gid: u32,
    },
    /// `user` was set but we are not root: nothing to drop (as nginx does).
    NotRoot,
    /// No `user` configured.
    NotRequested,
}

/// Switch to `user` (and `group`, default: the user's primary group) when running
/// as root: setgroups, setgid, setuid, then PR_SET_NO_NEW_PRIVS.
pub fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<Outcome, PrivilegeError> {
    let Some(user_name) = user else {
        return Ok(Outcome::NotRequested);
    };
    if !Uid::effective().is_root() {
        return Ok(Outcome::NotRoot);
    }
    let user = User::from_name(user_name)
        .map_err(sys("getpwnam"))?
        .ok_or_else(|| PrivilegeError::NoSuchUser(user_name.to_owned()))?;
    if user.uid.is_root() {
        return Err(PrivilegeError::TargetIsRoot(user_name.to_owned()));
    }
    let gid: Gid = match group {
        Some(name) => {
            Group::from_name(name)
                .map_err(sys("getgrnam"))?
                .ok_or_else(|| PrivilegeError::NoSuchGroup(name.to_owned()))?
                .gid
        }
        None => user.gid,
    };
    unistd::setgroups(&[gid]).map_err(sys("setgroups"))?;
    unistd::setgid(gid).map_err(sys("setgid"))?;
    unistd::setuid(user.uid).map_err(sys("setuid"))?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(PrivilegeError::Sys {
            what: "prctl(PR_SET_NO_NEW_PRIVS)",
            source: nix::Error::last(),
        });
    }
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::NotDropped);
    }
    Ok(Outcome::Dropped {
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_requested_is_a_no_op() {
        assert_eq!(drop_privileges(None, None).unwrap(), Outcome::NotRequested);
    }

    #[test]
    fn dropping_to_root_is_refused() {
        if !Uid::effective().is_root() {
            return; // only root can reach the check
        }
        assert!(matches!(
            drop_privileges(Some("root"), None),
            Err(PrivilegeError::TargetIsRoot(_))
        ));
    }

    #[test]
    fn unknown_user_is_an_error() {
        if !Uid::effective().is_root() {
            return;
        }
        assert!(matches!(
            drop_privileges(Some("no-such-user-river-test"), None),
            Err(PrivilegeError::NoSuchUser(_))
        ));
    }
}
