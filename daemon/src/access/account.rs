//! The host's user and group database, through the C library (so that NSS sources such as
//! LDAP count as they do for `id`): a group's id by name, and every group of a user.
//!
//! Each call copies what it needs out of the C library's buffers before returning; none keeps
//! a pointer.

use std::ffi::{CStr, CString};

/// The largest buffer a lookup grows to before it gives up.
const MAX_BUFFER: usize = 1 << 20;

/// Runs `lookup` (a `get*_r` call) with a buffer, doubled while it answers `ERANGE`; what it
/// found, None when it failed or found nothing.
fn with_buffer<T>(
    mut lookup: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Option<T> {
    let mut size = 1024;
    loop {
        let mut buffer = vec![0 as libc::c_char; size];
        let (rc, found) = lookup(&mut buffer);
        if rc == libc::ERANGE && size < MAX_BUFFER {
            size *= 2;
            continue;
        }
        return if rc == 0 { found } else { None };
    }
}

/// The id of the group `name` (or `name` itself when it is a number); None when the host knows
/// no such group.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let c_name = CString::new(name).ok()?;
    with_buffer(|buffer| {
        let mut group = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `group` and
        // `found` are writable, and `buffer` is as long as the length passed.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                group.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        // SAFETY: a non-null `found` means `group` was filled in.
        let gid = (!found.is_null()).then(|| unsafe { group.assume_init() }.gr_gid);
        (rc, gid)
    })
}

/// The name and primary group of user `uid`; None when the host knows no such user.
fn user(uid: u32) -> Option<(CString, u32)> {
    with_buffer(|buffer| {
        let mut passwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `passwd` and `found` are writable and `buffer` is as long as the length
        // passed.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                passwd.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        let user = (!found.is_null()).then(|| {
            // SAFETY: a non-null `found` means `passwd` was filled in; its name points into
            // `buffer`, alive here, and is copied out.
            let passwd = unsafe { passwd.assume_init() };
            let name = unsafe { CStr::from_ptr(passwd.pw_name) }.to_owned();
            (name, passwd.pw_gid)
        });
        (rc, user)
    })
}

/// Every group of user `uid`: its primary group and its supplementary groups, as the group
/// database lists them. Empty when the host knows no such user.
pub fn groups_of(uid: u32) -> Vec<u32> {
    let Some((name, primary)) = user(uid) else {
        return Vec::new();
    };
    let mut count: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let asked = count;
        // SAFETY: the name is NUL-terminated and `groups` holds `count` entries; the call
        // writes at most that many and sets `count` to how many there are.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        // Too few entries: `count` now says how many are needed.
        if count <= asked {
            count = asked * 2;
        }
        if count as usize > MAX_BUFFER {
            return vec![primary];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_group_zero_and_numbers_are_ids() {
        assert_eq!(group_id("0"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-of-arroyod"), None);
        assert!(groups_of(0).contains(&0));
        assert!(groups_of(4_000_000_000).is_empty());
    }
}
