//! The path dialect of Step Functions, and its translation to RFC 9535 JSONPath.
//!
//! Step Functions reads paths with Jayway JsonPath, which differs from RFC 9535 in two ways
//! this module makes up for: a dotted name may hold any character but `.`, `[`, `]`, quotes,
//! spaces and JSONPath operators (`$.my-field`), and a quoted name is the literal text between
//! its quotes: a backslash only stops the next character from closing the name and is kept as
//! written (`$['a\"b']` names the four characters `a\"b`).

/// One step of a Reference Path: a name or an integer index.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PathStep {
    Field(String),
    Index(i64),
}

/// Parses a Reference Path: `$` followed by `.name`, `['name']`, `["name"]` or `[index]`
/// steps. Such a path selects at most one value.
pub(super) fn parse_reference_path(text: &str) -> Result<Vec<PathStep>, String> {
    let Some(mut rest) = text.strip_prefix('$') else {
        return Err("it does not start with \"$\"".to_owned());
    };
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
            let name = &after_dot[..end];
            if name.is_empty() || !name.chars().all(is_plain_name_char) {
                return Err(format!("{name:?} is not a plain field name"));
            }
            steps.push(PathStep::Field(name.to_owned()));
            rest = &after_dot[end..];
        } else if let Some(after_bracket) = rest.strip_prefix('[') {
            let (step, after_step) = parse_bracket_step(after_bracket.trim_start())?;
            let Some(after_close) = after_step.trim_start().strip_prefix(']') else {
                return Err("a bracket is not closed".to_owned());
            };
            steps.push(step);
            rest = after_close;
        } else {
            return Err(format!("unexpected {rest:?}"));
        }
    }
    Ok(steps)
}

fn is_plain_name_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '.' | '[' | ']' | '*' | '\'' | '"' | '?' | '@' | '(' | ')' | ',' | ':' | '$'
        )
}

fn parse_bracket_step(text: &str) -> Result<(PathStep, &str), String> {
    if let Some(quote) = opening_quote(text) {
        let (name, rest) = parse_quoted_name(&text[1..], quote)?;
        return Ok((PathStep::Field(name.to_owned()), rest));
    }
    let digits_start = usize::from(text.starts_with('-'));
    let end = text[digits_start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |end| end + digits_start);
    if end == digits_start {
        return Err("only quoted names and integer indexes may stand in brackets".to_owned());
    }
    let index = text[..end]
        .parse::<i64>()
        .map_err(|_| format!("{:?} is not a usable index", &text[..end]))?;
    Ok((PathStep::Index(index), &text[end..]))
}

fn opening_quote(text: &str) -> Option<char> {
    text.chars().next().filter(|c| *c == '\'' || *c == '"')
}

/// Reads a quoted name up to its closing `quote` (`text` starts after the opening one):
/// the name is the text between the quotes, exactly as written.
fn parse_quoted_name(text: &str, quote: char) -> Result<(&str, &str), String> {
    let mut escaped = false;
    for (position, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Ok((&text[..position], &text[position + 1..]));
        }
    }
    Err("a quoted name is not closed".to_owned())
}

/// A path of names and indexes in RFC 9535 bracket notation: `$['a-b'][0]`.
pub(super) fn bracketed(steps: &[PathStep]) -> String {
    let mut path = String::from("$");
    for step in steps {
        match step {
            PathStep::Field(name) => push_name_selector(&mut path, name),
            PathStep::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// Appends `['name']`, escaped as RFC 9535 wants so that it selects exactly `name`.
fn push_name_selector(path: &mut String, name: &str) {
    path.push('[');
    push_quoted(path, name);
    path.push(']');
}

fn push_quoted(path: &mut String, name: &str) {
    path.push('\'');
    for c in name.chars() {
        match c {
            '\\' => path.push_str("\\\\"),
            '\'' => path.push_str("\\'"),
            c if (c as u32) < 0x20 => path.push_str(&format!("\\u{:04x}", c as u32)),
            c => path.push(c),
        }
    }
    path.push('\'');
}

/// Rewrites any path of the dialect (wildcards, slices, unions, filters, descendants) in RFC
/// 9535 syntax: dotted and quoted names become escaped bracketed names, the rest is kept.
/// `None` when the text does not follow the dialect; the JSONPath parser then says what is
/// wrong with it. Filter expressions are passed on as written.
pub(super) fn to_rfc9535(text: &str) -> Option<String> {
    let mut rest = text.strip_prefix('$')?;
    let mut path = String::from("$");
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("..") {
            path.push_str("..");
            rest = match after.strip_prefix('[') {
                Some(segment) => bracket_segment(segment, &mut path)?,
                None => dotted_selector(after, &mut path)?,
            };
        } else if let Some(after) = rest.strip_prefix('.') {
            rest = dotted_selector(after, &mut path)?;
        } else if let Some(after) = rest.strip_prefix('[') {
            rest = bracket_segment(after, &mut path)?;
        } else {
            return None;
        }
    }
    Some(path)
}

/// `name` or `*` after a dot.
fn dotted_selector<'t>(text: &'t str, path: &mut String) -> Option<&'t str> {
    if let Some(rest) = text.strip_prefix('*') {
        path.push_str("[*]");
        return Some(rest);
    }
    let end = text
        .find(|c: char| !is_plain_name_char(c))
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    push_name_selector(path, &text[..end]);
    Some(&text[end..])
}

/// The selectors of one `[...]` segment (`text` starts after the `[`).
fn bracket_segment<'t>(text: &'t str, path: &mut String) -> Option<&'t str> {
    let mut rest = text.trim_start();
    if rest.starts_with('?') {
        return filter_segment(rest, path);
    }
    path.push('[');
    loop {
        rest = selector(rest, path)?.trim_start();
        if let Some(after) = rest.strip_prefix(']') {
            path.push(']');
            return Some(after);
        }
        rest = rest.strip_prefix(',')?.trim_start();
        path.push(',');
    }
}

/// A quoted name, `*`, an index or a slice.
fn selector<'t>(text: &'t str, path: &mut String) -> Option<&'t str> {
    if let Some(quote) = opening_quote(text) {
        let (name, rest) = parse_quoted_name(&text[1..], quote).ok()?;
        push_quoted(path, name);
        return Some(rest);
    }
    if let Some(rest) = text.strip_prefix('*') {
        path.push('*');
        return Some(rest);
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | ':' | ' ')))
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    path.push_str(&text[..end]);
    Some(&text[end..])
}

/// A filter segment (`text` starts at its `?`), copied up to its closing bracket.
fn filter_segment<'t>(text: &'t str, path: &mut String) -> Option<&'t str> {
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for (position, c) in text.char_indices() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' => depth += 1,
            ']' if depth == 0 => {
                path.push('[');
                path.push_str(&text[..position]);
                path.push(']');
                return Some(&text[position + 1..]);
            }
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str) -> PathStep {
        PathStep::Field(name.to_owned())
    }

    #[test]
    fn a_reference_path_is_made_of_names_and_indexes() {
        assert_eq!(parse_reference_path("$"), Ok(vec![]));
        assert_eq!(
            parse_reference_path("$.a['b c'][2][\"d\"][-1]"),
            Ok(vec![
                field("a"),
                field("b c"),
                PathStep::Index(2),
                field("d"),
                PathStep::Index(-1)
            ])
        );
        for not_a_reference in ["$.items[*]", "$.a[1:]", "$..a", "$.a[", "a.b", "$.a b"] {
            assert!(
                parse_reference_path(not_a_reference).is_err(),
                "{not_a_reference}"
            );
        }
    }

    #[test]
    fn a_quoted_path_name_keeps_its_backslashes_as_written() {
        assert_eq!(
            parse_reference_path(r#"$['a\"b']"#),
            Ok(vec![field(r#"a\"b"#)])
        );
        assert_eq!(
            parse_reference_path(r"$['it\'s']"),
            Ok(vec![field(r"it\'s")])
        );
        assert_eq!(
            parse_reference_path(r#"$["a\nb"]"#),
            Ok(vec![field(r"a\nb")])
        );
        assert_eq!(parse_reference_path(r"$['a\\']"), Ok(vec![field(r"a\\")]));
    }

    #[test]
    fn bracketed_names_escape_what_rfc_9535_would_read_as_an_escape() {
        assert_eq!(
            bracketed(&[field(r"it\'s"), PathStep::Index(0), field("a-b")]),
            r"$['it\\\'s'][0]['a-b']"
        );
    }

    #[test]
    fn any_path_of_the_dialect_is_rewritten_in_rfc_9535_syntax() {
        let cases = [
            ("$.items[*].id", "$['items'][*]['id']"),
            ("$.my-items.*", "$['my-items'][*]"),
            ("$.a[1:]", "$['a'][1:]"),
            ("$.a[0, 2]", "$['a'][0,2]"),
            ("$..id", "$..['id']"),
            ("$..[0]", "$..[0]"),
            (r#"$['a\"b'][*]"#, r#"$['a\\"b'][*]"#),
            ("$.items[?(@.id > 1)].id", "$['items'][?(@.id > 1)]['id']"),
            ("$.items[?@.tag == ']']", "$['items'][?@.tag == ']']"),
        ];
        for (dialect, rfc) in cases {
            assert_eq!(to_rfc9535(dialect).as_deref(), Some(rfc), "{dialect}");
        }
        for broken in ["$.a[", "$.", "$[?@.a", "x"] {
            assert_eq!(to_rfc9535(broken), None, "{broken}");
        }
    }
}
