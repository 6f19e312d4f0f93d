//! The columns of `clip ls -l`, as GNU `ls -l` shows them: mode, links, owner and group (names from the
//! image when it has them, left-aligned; else numbers, right-aligned), size (or `major, minor`), the
//! modification time in UTC (`Mon DD HH:MM` within the last six months, else `Mon DD  YYYY`), the name.

use clip_format::{NodeKind, NodeView};
use clip_image::Owners;

/// GNU ls's "six months": half of an average Gregorian year, in seconds.
const SIX_MONTHS: i64 = 31_556_952 / 2;

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// One entry's columns before the name.
pub struct Columns {
    mode: String,
    nlink: String,
    /// The owner, and whether it is a name (left-aligned) or a number (right-aligned).
    user: (String, bool),
    group: (String, bool),
    size: String,
    time: String,
}

impl Columns {
    pub fn of(n: &NodeView, owners: &Owners, now: i64) -> Columns {
        let size = match n.kind() {
            NodeKind::CharDevice | NodeKind::BlockDevice => format!("{}, {}", n.rdev().0, n.rdev().1),
            _ => n.size.to_string(),
        };
        let named =
            |name: Option<&str>, id: u32| name.map_or_else(|| (id.to_string(), false), |s| (s.to_owned(), true));
        Columns {
            mode: mode_string(n.mode),
            nlink: n.nlink.to_string(),
            user: named(owners.user(n.uid), n.uid),
            group: named(owners.group(n.gid), n.gid),
            size,
            time: mtime(n.mtime.sec, now),
        }
    }
}

/// Column widths of a listing.
#[derive(Default)]
pub struct Widths {
    nlink: usize,
    user: usize,
    group: usize,
    size: usize,
}

impl Widths {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a Columns>) -> Widths {
        rows.into_iter().fold(Widths::default(), |w, c| Widths {
            nlink: w.nlink.max(c.nlink.chars().count()),
            user: w.user.max(c.user.0.chars().count()),
            group: w.group.max(c.group.0.chars().count()),
            size: w.size.max(c.size.chars().count()),
        })
    }
}

/// The columns, aligned, with a trailing space before the name.
pub fn render(c: &Columns, w: &Widths) -> String {
    let pad = |(text, name): &(String, bool), width: usize| {
        if *name {
            format!("{text:<width$}")
        } else {
            format!("{text:>width$}")
        }
    };
    format!(
        "{} {:>nl$} {} {} {:>sz$} {} ",
        c.mode,
        c.nlink,
        pad(&c.user, w.user),
        pad(&c.group, w.group),
        c.size,
        c.time,
        nl = w.nlink,
        sz = w.size
    )
}

/// `Mon DD HH:MM` for a time within the six months before `now`, else `Mon DD  YYYY` (UTC).
pub fn mtime(sec: i64, now: i64) -> String {
    let (year, month, day) = civil_date(sec.div_euclid(86_400));
    let mon = MONTHS[month as usize - 1];
    if now - SIX_MONTHS < sec && sec <= now {
        let of_day = sec.rem_euclid(86_400);
        format!("{mon} {day:>2} {:02}:{:02}", of_day / 3600, of_day % 3600 / 60)
    } else {
        format!("{mon} {day:>2} {year:>5}")
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `ls -l` style mode: type letter and rwx triplets with s/t bits.
fn mode_string(mode: u32) -> String {
    let t = match NodeKind::from_mode(mode) {
        Some(NodeKind::Dir) => 'd',
        Some(NodeKind::Symlink) => 'l',
        Some(NodeKind::CharDevice) => 'c',
        Some(NodeKind::BlockDevice) => 'b',
        Some(NodeKind::Fifo) => 'p',
        Some(NodeKind::Socket) => 's',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(47_482), (2100, 1, 1));
        assert_eq!(civil_date(1_000_000_000 / 86_400), (2001, 9, 9));
    }

    #[test]
    fn recent_times_show_the_hour_others_the_year() {
        let now = 1_700_000_000; // Nov 14 2023 22:13:20 UTC
        assert_eq!(mtime(now, now), "Nov 14 22:13");
        assert_eq!(mtime(now - 3600 * 24 * 30, now), "Oct 15 22:13");
        assert_eq!(mtime(1_000_000_000, now), "Sep  9  2001");
        assert_eq!(mtime(now + 60, now), "Nov 14  2023", "the future shows the year");
        assert_eq!(mtime(now - SIX_MONTHS, now), "May 16  2023");
        assert_eq!(mtime(-1, now), "Dec 31  1969");
    }

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
    }
}
