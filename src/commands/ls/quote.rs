//! Names as `clip ls` prints them: a name is bytes from the image, and none of its bytes may reach a
//! terminal raw (an escape sequence would act on it, a newline would split an entry).
//! - [`Quoting::Shell`], on a terminal: GNU `ls`'s default there, `shell-escape` — bare when the name needs
//!   nothing, else single quotes with `$'…'` for control characters and bytes that are not UTF-8
//!   (`'a'$'\n''b'`), or double quotes for a name whose only trouble is a `'` (`"it's"`). Pasted into a
//!   shell, the text is the name.
//! - [`Quoting::Escape`], elsewhere: C-style backslash escapes of control characters, backslashes and bytes
//!   that are not UTF-8 (`a\nb`, `\033[31m`, `\\`, `\377`), everything else as it is; one entry per line.

/// How to write a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    Shell,
    Escape,
}

/// One character of a name: printable, or bytes to write as escapes (a control character's UTF-8 bytes,
/// or one byte that is not UTF-8).
enum Unit<'a> {
    Char(char),
    Bytes(&'a [u8]),
}

/// `name` split into [`Unit`]s.
fn units(name: &[u8]) -> Vec<Unit<'_>> {
    let mut out = Vec::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        let mut rest = chunk.valid();
        while let Some(c) = rest.chars().next() {
            let (this, tail) = rest.split_at(c.len_utf8());
            out.push(if c.is_control() { Unit::Bytes(this.as_bytes()) } else { Unit::Char(c) });
            rest = tail;
        }
        out.extend(chunk.invalid().chunks(1).map(Unit::Bytes));
    }
    out
}

/// The C escape of one byte: `\n`, `\t`, … or three octal digits.
fn push_escape(out: &mut String, b: u8) {
    let short = match b {
        7 => Some('a'),
        8 => Some('b'),
        9 => Some('t'),
        10 => Some('n'),
        11 => Some('v'),
        12 => Some('f'),
        13 => Some('r'),
        _ => None,
    };
    match short {
        Some(c) => {
            out.push('\\');
            out.push(c);
        }
        None => out.push_str(&format!("\\{b:03o}")),
    }
}

/// `name` written for the terminal or for a pipe.
pub fn quote(name: &[u8], how: Quoting) -> String {
    let units = units(name);
    match how {
        Quoting::Escape => escape(&units),
        Quoting::Shell => shell(name, &units),
    }
}

fn escape(units: &[Unit<'_>]) -> String {
    let mut out = String::new();
    for u in units {
        match u {
            Unit::Char('\\') => out.push_str("\\\\"),
            Unit::Char(c) => out.push(*c),
            Unit::Bytes(bytes) => bytes.iter().for_each(|&b| push_escape(&mut out, b)),
        }
    }
    out
}

/// Characters a shell would act on: the name needs quotes when it holds one.
const SHELL_SPECIAL: &str = " !\"$&'()*;<=>?[\\^`|";

/// Characters that mean the same in double quotes as in single ones (GNU's "c and shell quote compatible").
fn double_quote_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || " %+,-./:@]_'".contains(c) || !c.is_ascii()
}

fn shell(name: &[u8], units: &[Unit<'_>]) -> String {
    let escapes = units.iter().any(|u| matches!(u, Unit::Bytes(_)));
    let chars = || units.iter().filter_map(|u| if let Unit::Char(c) = u { Some(*c) } else { None });
    let needs_quotes = name.is_empty()
        || escapes
        || chars().any(|c| SHELL_SPECIAL.contains(c))
        || name.starts_with(b"#")
        || name.starts_with(b"~")
        || name == b"{"
        || name == b"}";
    if !needs_quotes {
        return chars().collect();
    }
    if !escapes && chars().any(|c| c == '\'') && chars().all(double_quote_safe) {
        return format!("\"{}\"", chars().collect::<String>());
    }
    // Single quotes throughout; a `'` is written '\'' and escapes go in $'…', both between closed quotes.
    let mut out = String::from("'");
    let mut in_dollar = false;
    for u in units {
        match u {
            Unit::Bytes(bytes) => {
                if !in_dollar {
                    out.push_str("'$'");
                    in_dollar = true;
                }
                bytes.iter().for_each(|&b| push_escape(&mut out, b));
            }
            Unit::Char(c) => {
                if in_dollar {
                    out.push_str("''");
                    in_dollar = false;
                }
                if *c == '\'' {
                    out.push_str("'\\''");
                } else {
                    out.push(*c);
                }
            }
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, GNU `ls --quoting-style=shell-escape`, GNU `ls -b` but spaces kept), from coreutils 9.1.
    const CASES: &[(&[u8], &str, &str)] = &[
        (b"plain", "plain", "plain"),
        (b"a\nb", r"'a'$'\n''b'", r"a\nb"),
        (b"\x1b[31mred", r"''$'\033''[31mred'", r"\033[31mred"),
        (b"tab\tx", r"'tab'$'\t''x'", r"tab\tx"),
        (b"tail\x01", r"'tail'$'\001'", r"tail\001"),
        (b"x\x01\x02y", r"'x'$'\001\002''y'", r"x\001\002y"),
        (b"a\x7fb", r"'a'$'\177''b'", r"a\177b"),
        (b"c\xc2\x85d", r"'c'$'\302\205''d'", r"c\302\205d"),
        (b"inv\xffalid", r"'inv'$'\377''alid'", r"inv\377alid"),
        (b"back\\slash", r"'back\slash'", r"back\\slash"),
        (b"sp ace", "'sp ace'", "sp ace"),
        (b"quo'te", "\"quo'te\"", "quo'te"),
        (b"a b'c", "\"a b'c\"", "a b'c"),
        (b"a!b'c", r"'a!b'\''c'", "a!b'c"),
        (b"x'$y", r"'x'\''$y'", "x'$y"),
        (b"q'\nz", r"'q'\'''$'\n''z'", r"q'\nz"),
        (b"#y", "'#y'", "#y"),
        (b"x#y", "x#y", "x#y"),
        (b"~y", "'~y'", "~y"),
        (b"x~y", "x~y", "x~y"),
        (b"{", "'{'", "{"),
        (b"a{", "a{", "a{"),
        (b"]y", "]y", "]y"),
        (b"%+,-.:@_", "%+,-.:@_", "%+,-.:@_"),
        ("ü".as_bytes(), "ü", "ü"),
        ("é'x".as_bytes(), "\"é'x\"", "é'x"),
        (b"", "''", ""),
    ];

    #[test]
    fn names_are_quoted_as_gnu_ls_does() {
        for (name, shell, escaped) in CASES {
            assert_eq!(quote(name, Quoting::Shell), *shell, "shell-escape of {name:?}");
            assert_eq!(quote(name, Quoting::Escape), *escaped, "escape of {name:?}");
        }
    }

    #[test]
    fn every_special_character_is_quoted_and_no_control_byte_survives() {
        for c in SHELL_SPECIAL.chars() {
            let name = format!("x{c}y");
            assert!(quote(name.as_bytes(), Quoting::Shell).starts_with(['\'', '"']), "{name:?}");
        }
        for b in (0u8..0x20).chain([0x7f]) {
            for how in [Quoting::Shell, Quoting::Escape] {
                let q = quote(&[b'a', b, b'b'], how);
                assert!(!q.bytes().any(|c| c < 0x20 || c == 0x7f), "{b:#x} {how:?}: {q:?}");
            }
        }
    }
}
