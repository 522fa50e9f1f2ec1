//! Reading the few S3 XML answers we need (ListParts, CreateMultipartUpload, errors, listings):
//! flat elements without attributes that matter, so a scan for `<Name>text</Name>` is enough
//! and no XML crate is pulled in for it. Text is unescaped (`&quot;` in ETags, `&amp;` in keys).

/// The text of the first `<tag>` in `xml`.
pub fn first(xml: &str, tag: &str) -> Option<String> {
    all(xml, tag).into_iter().next()
}

/// The text of every `<tag>` in `xml`, in order (a self-closing `<tag/>` is empty text).
pub fn all(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let empty = format!("<{tag}/>");
    let mut out = Vec::new();
    let mut rest = xml;
    loop {
        let at_open = rest.find(&open);
        let at_empty = rest.find(&empty);
        match (at_open, at_empty) {
            (Some(o), e) if e.is_none_or(|e| o < e) => {
                let body = &rest[o + open.len()..];
                let Some(end) = body.find(&close) else { break };
                out.push(unescape(&body[..end]));
                rest = &body[end + close.len()..];
            }
            (_, Some(e)) => {
                out.push(String::new());
                rest = &rest[e + empty.len()..];
            }
            _ => break,
        }
    }
    out
}

/// Undoes XML's five escapes and numeric character references.
pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let ch = match entity {
            "quot" => Some('"'),
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=semi]),
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for an XML element's content.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parts_and_unescapes() {
        let xml = "<ListPartsResult><Part><PartNumber>1</PartNumber><ETag>&quot;ab&quot;</ETag>\
                   </Part><Part><PartNumber>2</PartNumber><ETag/></Part></ListPartsResult>";
        let parts = all(xml, "Part");
        assert_eq!(parts.len(), 2);
        assert_eq!(first(&parts[0], "ETag").as_deref(), Some("\"ab\""));
        assert_eq!(first(&parts[1], "ETag").as_deref(), Some(""));
        assert_eq!(first(xml, "Missing"), None);
        assert_eq!(unescape("a&amp;b&#x41;&#66;&bogus;"), "a&bAB&bogus;");
        assert_eq!(escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
