//! The names of an image's users and groups ([`Owners`]), from the image's own `/etc/passwd` and
//! `/etc/group` read through the archive, for listings such as `clip ls -l`. A missing, oversized or
//! unreadable file (or one that is a symlink: it would point into the host's view, not the image's) just
//! leaves the ids without names.

use std::collections::HashMap;

use clip_format::NodeKind;
use tracing::debug;

use crate::Opened;

/// Larger account files are not read (a listing only wants names).
const MAX_FILE: u64 = 1 << 20;

/// User and group names by id.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Owners {
    /// The names in the image's `/etc/passwd` and `/etc/group` (fetching their spans when needed).
    pub async fn read(opened: &Opened) -> Owners {
        let users = read_small(opened, "/etc/passwd").await.map(|t| parse(&t)).unwrap_or_default();
        let groups = read_small(opened, "/etc/group").await.map(|t| parse(&t)).unwrap_or_default();
        Owners { users, groups }
    }

    /// Owners from the text of a passwd file and a group file.
    pub fn from_files(passwd: &str, group: &str) -> Owners {
        Owners { users: parse(passwd), groups: parse(group) }
    }

    pub fn user(&self, uid: u32) -> Option<&str> {
        self.users.get(&uid).map(String::as_str)
    }

    pub fn group(&self, gid: u32) -> Option<&str> {
        self.groups.get(&gid).map(String::as_str)
    }
}

/// `NAME:PASSWORD:ID:…` lines; the first name of an id wins, as with getpwuid.
fn parse(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if let (false, Ok(id)) = (name.is_empty(), id.parse::<u32>()) {
            names.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// The text of a regular file of the image of at most [`MAX_FILE`] bytes; `None` otherwise.
async fn read_small(opened: &Opened, path: &str) -> Option<String> {
    let archive = &opened.archive;
    let node = archive.resolve(path.as_bytes()).ok().flatten().and_then(|ino| archive.node(ino).ok())?;
    let data = node.data_ref().filter(|d| node.kind() == NodeKind::File && d.size <= MAX_FILE)?;
    match opened.store.read(data, 0, data.size).await {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(error) => {
            debug!(path, error = &error as &dyn std::error::Error, "reading the image's account file");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_first_entry_of_an_id() {
        let o = Owners::from_files(
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nalias:x:1000:5::/:/bin/sh\nbad line\n:x:7:7::/:\n",
            "root:x:0:\nstaff:x:1001:app\nnogid:x:\n",
        );
        assert_eq!((o.user(0), o.user(1000), o.user(7), o.user(42)), (Some("root"), Some("app"), None, None));
        assert_eq!((o.group(1001), o.group(0), o.group(5)), (Some("staff"), Some("root"), None));
    }
}
