//! A directory's entries in the merge tree ([`Children`]), sorted by name: a sorted vector while the
//! directory is small (most are; lookups by binary search, inserts shift at most [`SMALL`] slots and are
//! appends when the tar is in name order), a `BTreeMap` past that. Each name is a [`Name`] of 16 bytes, so
//! an entry costs 24 bytes in a vector that is mostly full, not ~48 in a map's half-full nodes plus a name
//! allocation.

use std::collections::{btree_map, BTreeMap};

use super::tree::Child;

/// Longest name kept inline in a [`Name`].
pub(super) const INLINE: usize = 14;

/// A directory entry's name in 16 bytes: up to [`INLINE`] bytes in place, longer ones behind a thin pointer.
/// Ordered, compared and borrowed as its bytes, so a map keyed by names is looked up with a `&[u8]`.
#[derive(Clone)]
pub(super) enum Name {
    Inline(u8, [u8; INLINE]),
    #[allow(clippy::redundant_allocation)] // a thin pointer keeps the name at 16 bytes
    Heap(Box<Box<[u8]>>),
}

impl Name {
    pub fn new(bytes: &[u8]) -> Name {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Name::Inline(bytes.len() as u8, inline)
        } else {
            Name::Heap(Box::new(bytes.into()))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline(len, bytes) => &bytes[..*len as usize],
            Name::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Entries a directory keeps in a sorted vector before they move to a map.
pub(super) const SMALL: usize = 4096;

/// A directory's entries by name. See the [module docs](self).
#[derive(Debug)]
pub(super) enum Children {
    Small(Vec<(Name, Child)>),
    Large(BTreeMap<Name, Child>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Small(Vec::new())
    }
}

fn find(small: &[(Name, Child)], name: &[u8]) -> Result<usize, usize> {
    small.binary_search_by(|(n, _)| n.as_bytes().cmp(name))
}

impl Children {
    pub fn get(&self, name: &[u8]) -> Option<&Child> {
        match self {
            Children::Small(v) => find(v, name).ok().map(|i| &v[i].1),
            Children::Large(m) => m.get(name),
        }
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut Child> {
        match self {
            Children::Small(v) => find(v, name).ok().map(|i| &mut v[i].1),
            Children::Large(m) => m.get_mut(name),
        }
    }

    /// Adds (or replaces) the entry `name`; returns the one it replaced.
    pub fn insert(&mut self, name: Name, child: Child) -> Option<Child> {
        let v = match self {
            Children::Large(m) => return m.insert(name, child),
            Children::Small(v) => v,
        };
        match find(v, name.as_bytes()) {
            Ok(i) => Some(std::mem::replace(&mut v[i].1, child)),
            Err(i) => {
                v.insert(i, (name, child));
                if v.len() > SMALL {
                    *self = Children::Large(std::mem::take(v).into_iter().collect());
                }
                None
            }
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Child> {
        match self {
            Children::Small(v) => find(v, name).ok().map(|i| v.remove(i).1),
            Children::Large(m) => m.remove(name),
        }
    }

    /// The entries in name order.
    pub fn iter(&self) -> Iter<'_> {
        match self {
            Children::Small(v) => Iter::Small(v.iter()),
            Children::Large(m) => Iter::Large(m.iter()),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &Child> {
        self.iter().map(|(_, c)| c)
    }

    pub fn into_values(self) -> impl Iterator<Item = Child> {
        self.into_iter().map(|(_, c)| c)
    }
}

/// [`Children::iter`].
pub(super) enum Iter<'a> {
    Small(std::slice::Iter<'a, (Name, Child)>),
    Large(btree_map::Iter<'a, Name, Child>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Name, &'a Child);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(it) => it.next().map(|(n, c)| (n, c)),
            Iter::Large(it) => it.next(),
        }
    }
}

impl<'a> IntoIterator for &'a Children {
    type Item = (&'a Name, &'a Child);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The entries by value, in name order.
pub(super) enum IntoIter {
    Small(std::vec::IntoIter<(Name, Child)>),
    Large(btree_map::IntoIter<Name, Child>),
}

impl Iterator for IntoIter {
    type Item = (Name, Child);

    fn next(&mut self) -> Option<(Name, Child)> {
        match self {
            IntoIter::Small(it) => it.next(),
            IntoIter::Large(it) => it.next(),
        }
    }
}

impl IntoIterator for Children {
    type Item = (Name, Child);
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        match self {
            Children::Small(v) => IntoIter::Small(v.into_iter()),
            Children::Large(m) => IntoIter::Large(m.into_iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_stay_sorted_and_found_across_the_move_to_a_map() {
        let child = |i: u32| Child { node: super::super::tree::NodeId(i), upper: 0 };
        let mut c = Children::default();
        // Reversed and interleaved, so inserts land in the middle, past SMALL entries.
        let names: Vec<Vec<u8>> =
            (0..(SMALL as u32 + 100)).rev().map(|i| format!("n{:05}", (i * 7919) % 10007).into_bytes()).collect();
        for (i, n) in names.iter().enumerate() {
            assert!(c.insert(Name::new(n), child(i as u32)).is_none());
            if i + 1 == SMALL {
                assert!(matches!(c, Children::Small(_)));
            }
        }
        assert!(matches!(c, Children::Large(_)));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(c.iter().map(|(n, _)| n.as_bytes().to_vec()).collect::<Vec<_>>(), sorted);
        for (i, n) in names.iter().enumerate() {
            assert_eq!(c.get(n).map(|ch| ch.node.0), Some(i as u32));
        }
        assert_eq!(c.insert(Name::new(&names[3]), child(99)).map(|ch| ch.node.0), Some(3));
        assert_eq!(c.remove(&names[3]).map(|ch| ch.node.0), Some(99));
        assert!(c.get(&names[3]).is_none());

        let mut small = Children::default();
        for n in [&b"b"[..], b"a", b"c"] {
            small.insert(Name::new(n), child(1));
        }
        small.get_mut(b"c").unwrap().upper = 5;
        assert_eq!(small.remove(b"a").map(|ch| ch.node.0), Some(1));
        let left: Vec<(Vec<u8>, u32)> = small.into_iter().map(|(n, ch)| (n.as_bytes().to_vec(), ch.upper)).collect();
        assert_eq!(left, vec![(b"b".to_vec(), 0), (b"c".to_vec(), 5)]);
    }

    #[test]
    fn names_order_and_look_up_as_their_bytes_inline_or_not() {
        let long = [b'x'; INLINE + 1];
        let names: Vec<&[u8]> = vec![b"", b"a", b"ab", b"b", &long[..INLINE], &long, b"\xff"];
        let mut map = BTreeMap::new();
        for (i, n) in names.iter().enumerate().rev() {
            map.insert(Name::new(n), i);
        }
        let back: Vec<&[u8]> = map.keys().map(Name::as_bytes).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(back, sorted);
        assert!(matches!(Name::new(&long[..INLINE]), Name::Inline(..)));
        assert!(matches!(Name::new(&long), Name::Heap(_)));
        for (i, n) in names.iter().enumerate() {
            assert_eq!(map.get(*n), Some(&i));
        }
        assert_eq!(std::mem::size_of::<Name>(), 16);
        assert_eq!(std::mem::size_of::<Option<super::super::tree::Node>>(), 64);
    }
}
