//! Walk filters in containerd's filter syntax: `FIELD`, `FIELD==VALUE`, `FIELD!=VALUE`, joined by `,`
//! (all must hold); a snapshot matches a list of filters when any of them holds (an empty list matches
//! everything). Fields: `name`, `parent`, `kind`, `labels.KEY` where a key with dots or slashes is
//! quoted: `labels."containerd.io/snapshot.ref"==sha256:…`. Values may be quoted too. A field a snapshot
//! does not have matches nothing. containerd's metadata layer asks the backend with such filters when it
//! looks for a remote snapshot (`labels."containerd.io/snapshot.ref"==TARGET,parent=="PARENT"`).

use std::collections::BTreeMap;

use crate::error::Error;
use crate::meta::Kind;

/// The fields a filter can test.
pub struct Fields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: Kind,
    pub labels: &'a BTreeMap<String, String>,
}

/// A parsed list of filters.
#[derive(Debug)]
pub struct Filters(Vec<Vec<Selector>>);

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filters {
    /// Parses every filter of the list.
    pub fn parse(filters: &[String]) -> Result<Filters, Error> {
        let parsed = filters.iter().filter(|f| !f.trim().is_empty()).map(|f| parse_one(f)).collect::<Result<_, _>>()?;
        Ok(Filters(parsed))
    }

    /// Whether a snapshot with these fields passes.
    pub fn matches(&self, fields: &Fields<'_>) -> bool {
        self.0.is_empty() || self.0.iter().any(|all| all.iter().all(|s| s.matches(fields)))
    }
}

impl Selector {
    fn matches(&self, f: &Fields<'_>) -> bool {
        let value = match self.path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["name"] => Some(f.name),
            ["parent"] => Some(f.parent),
            ["kind"] => Some(f.kind.name()),
            ["labels", key] => f.labels.get(*key).map(String::as_str),
            _ => None,
        };
        match (&self.test, value) {
            (_, None) => false,
            (Test::Present, Some(_)) => true,
            (Test::Equal(want), Some(v)) => v == want,
            (Test::NotEqual(want), Some(v)) => v != want,
        }
    }
}

fn parse_one(filter: &str) -> Result<Vec<Selector>, Error> {
    let fail = |reason: &str| Error::Filter { filter: filter.to_owned(), reason: reason.to_owned() };
    let mut p = Parser { rest: filter };
    let mut selectors = Vec::new();
    loop {
        p.skip_spaces();
        let mut path = vec![p.field().map_err(|r| fail(&r))?];
        while p.eat(".") {
            path.push(p.field().map_err(|r| fail(&r))?);
        }
        p.skip_spaces();
        let test = if p.eat("==") {
            Test::Equal(p.value().map_err(|r| fail(&r))?)
        } else if p.eat("!=") {
            Test::NotEqual(p.value().map_err(|r| fail(&r))?)
        } else if p.rest.starts_with("~=") {
            return Err(fail("regular expressions (~=) are not supported; use == or !="));
        } else {
            Test::Present
        };
        selectors.push(Selector { path, test });
        p.skip_spaces();
        if p.rest.is_empty() {
            return Ok(selectors);
        }
        if !p.eat(",") {
            return Err(fail(&format!("expected ',' or the end at {:?}", p.rest)));
        }
    }
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// A field name: letters, digits and `_`, or a quoted string.
    fn field(&mut self) -> Result<String, String> {
        if self.rest.starts_with('"') {
            return self.quoted();
        }
        let end = self.rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(self.rest.len());
        if end == 0 {
            return Err(format!("expected a field name at {:?}", self.rest));
        }
        let (field, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(field.to_owned())
    }

    /// A value: a quoted string, or everything up to the next `,`.
    fn value(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.rest.starts_with('"') {
            return self.quoted();
        }
        let end = self.rest.find(',').unwrap_or(self.rest.len());
        let (value, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(value.trim_end().to_owned())
    }

    /// A double-quoted string with `\"` and `\\` escapes.
    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    _ => return Err("bad escape in a quoted string".to_owned()),
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(labels: &'a BTreeMap<String, String>) -> Fields<'a> {
        Fields { name: "sha256:top", parent: "default/3/sha256:low", kind: Kind::Committed, labels }
    }

    fn matches(filters: &[&str], labels: &BTreeMap<String, String>) -> bool {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&filters).unwrap().matches(&fields(labels))
    }

    #[test]
    fn containerd_remote_snapshot_lookup() {
        let labels = BTreeMap::from([("containerd.io/snapshot.ref".to_owned(), "sha256:top".to_owned())]);
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:top,parent=="default/3/sha256:low""#;
        assert!(matches(&[f], &labels));
        let other_parent = r#"labels."containerd.io/snapshot.ref"==sha256:top,parent=="""#;
        assert!(!matches(&[other_parent], &labels));
        assert!(!matches(&[f], &BTreeMap::new()), "a missing label matches nothing");
    }

    #[test]
    fn presence_inequality_kind_and_alternatives() {
        let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert!(matches(&[], &labels));
        assert!(matches(&["labels.team"], &labels));
        assert!(!matches(&["labels.owner"], &labels));
        assert!(matches(&["labels.team!=b", "kind==active"], &labels));
        assert!(matches(&["kind==view", "kind == committed"], &labels));
        assert!(!matches(&["kind==committed,name==other"], &labels));
        assert!(!matches(&["nosuchfield==x"], &labels));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        for bad in [r#"labels."open"#, "==x", "name==a b,", "name~=a.*"] {
            let err = Filters::parse(&[bad.to_owned()]).unwrap_err();
            assert!(matches!(err, Error::Filter { .. }), "{bad}: {err}");
        }
    }
}
