//! Prompt cleaning as the official pipeline applies it before tokenizing
//! (`wan/modules/tokenizers.py`, `clean='whitespace'`):
//! `whitespace_clean(basic_clean(text))`, where `basic_clean` is ftfy's `fix_text`, Python's
//! `html.unescape` twice, and `strip`, and `whitespace_clean` collapses `\s+` to one space.
//!
//! Of ftfy 6.3's `fix_text` we reproduce, per line and to a fixed point as it does: its own
//! HTML unescaping (off for the rest of the text once a line holds `<`), C1 controls read as
//! Windows-1252, Latin ligatures, full/half-width forms, curly quotes, line breaks, terminal
//! escapes, control characters, and NFC. Not reproduced: `fix_encoding` (mojibake repair);
//! `tests/golden/README.md` lists it.

use tokenizers::NormalizedString;

/// The official pipeline's prompt cleaning.
#[must_use]
pub fn clean_prompt(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let mut out = String::with_capacity(unescaped.len());
    for word in unescaped.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Python's `str.isspace`; `regex`'s `\s` is the same set less U+1C..U+1F, which ftfy has
/// already removed.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        let mut current = segment.to_owned();
        loop {
            let mut next = if unescape {
                ftfy_unescape(&current)
            } else {
                current.clone()
            };
            next = next.chars().map(c1_as_windows_1252).collect();
            next = next.chars().fold(String::new(), |mut s, c| {
                push_without_ligature(&mut s, c);
                s
            });
            next = next.chars().fold(String::new(), |mut s, c| {
                push_standard_width(&mut s, c);
                s
            });
            next = next.chars().map(uncurl).collect();
            next = fix_line_breaks(&next);
            next = remove_terminal_escapes(&next);
            next.retain(|c| !is_removed_control(c));
            let mut normalized = NormalizedString::from(next.as_str());
            normalized.nfc();
            normalized.get().clone_into(&mut next);
            if next == current {
                break;
            }
            current = next;
        }
        out.push_str(&current);
    }
    out
}

/// Windows-1252 for U+80..U+9F; the five undefined bytes stay as they are.
fn c1_as_windows_1252(c: char) -> char {
    const TABLE: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match c {
        '\u{80}'..='\u{9f}' => TABLE[c as usize - 0x80],
        _ => c,
    }
}

fn push_without_ligature(out: &mut String, c: char) {
    let replacement = match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => {
            out.push(c);
            return;
        }
    };
    out.push_str(replacement);
}

/// Ideographic space and the halfwidth/fullwidth forms block become their NFKC forms.
fn push_standard_width(out: &mut String, c: char) {
    match c {
        '\u{3000}' => out.push(' '),
        '\u{ff01}'..='\u{ffef}' => {
            let mut buf = [0; 4];
            out.push_str(
                NormalizedString::from(&*c.encode_utf8(&mut buf))
                    .nfkc()
                    .get(),
            );
        }
        _ => out.push(c),
    }
}

fn uncurl(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI `ESC [ digits-and-semicolons letter` sequences.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\u{1b}[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let params = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        match after[params..].chars().next() {
            Some(letter) if letter.is_ascii_alphabetic() => {
                rest = &after[params + 1..];
            }
            _ => {
                out.push('\u{1b}');
                rest = &rest[start + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_removed_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// ftfy's `unescape_html`: only `&name;` / `&#…;` forms of at most 24 characters, and only
/// when they decode completely.
fn ftfy_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let body = after.strip_prefix('#').unwrap_or(after);
        let name_len = body
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(body.len());
        let hash = after.len() - body.len();
        if (1..=24).contains(&name_len) && body[name_len..].starts_with(';') {
            let entity = &rest[start..=start + 1 + hash + name_len];
            let decoded = if hash == 1 {
                let d = html_unescape(entity);
                if d.contains(';') {
                    entity.to_owned()
                } else {
                    d
                }
            } else {
                named_entity(&entity[1..])
                    .or_else(|| uppercased_entity(&entity[1..]))
                    .unwrap_or_else(|| entity.to_owned())
            };
            out.push_str(&decoded);
            rest = &rest[start + entity.len()..];
        } else {
            out.push('&');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The HTML5 named reference `name` (with its `;`) if it is exactly one: every value is one
/// or two characters, while a partial (legacy-prefix) decode keeps the rest of the name.
fn named_entity(name: &str) -> Option<String> {
    let escaped = format!("&{name}");
    let decoded = htmlize::unescape(escaped.as_str());
    (decoded != escaped.as_str() && decoded.chars().count() <= 2).then(|| decoded.into_owned())
}

/// ftfy also reads an all-lowercase entity written in capitals (`&EACUTE;` → `É`), unless the
/// capitalised form already means something to `html.unescape` (`&LTIMES;` starts with `&LT`).
fn uppercased_entity(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if lower.to_ascii_uppercase() != name || lower == name {
        return None;
    }
    let escaped = format!("&{name}");
    if htmlize::unescape(escaped.as_str()) != escaped.as_str() {
        return None;
    }
    named_entity(&lower).map(|value| value.to_uppercase())
}

/// Python's `html.unescape`: numeric references with its replacements for invalid code
/// points, named references (legacy ones also without `;`, longest prefix first).
#[must_use]
pub fn html_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some((decoded, used)) = numeric_reference(after) {
            out.push_str(&decoded);
            rest = &after[used..];
            continue;
        }
        let name_len = after
            .char_indices()
            .take_while(|&(_, c)| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
            .take(32)
            .last()
            .map_or(0, |(i, c)| i + c.len_utf8());
        if name_len == 0 {
            out.push('&');
            rest = after;
            continue;
        }
        let used = name_len + usize::from(after[name_len..].starts_with(';'));
        // WHATWG's longest match over names with and without `;` is what Python's exact
        // lookup followed by its longest-legacy-prefix search amounts to.
        let escaped = format!("&{}", &after[..used]);
        out.push_str(&htmlize::unescape(escaped.as_str()));
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// `&#65;`, `&#x41`… at the start of `after` (the text after `&`): the decoded text and the
/// bytes consumed, by Python's rules for invalid numbers.
fn numeric_reference(after: &str) -> Option<(String, usize)> {
    let body = after.strip_prefix('#')?;
    let (digits, radix, prefix) = match body.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16, 2),
        None => (body, 10, 1),
    };
    let len = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if len == 0 {
        return None;
    }
    let used = prefix + len + usize::from(digits[len..].starts_with(';'));
    let number = u32::from_str_radix(&digits[..len], radix).unwrap_or(u32::MAX);
    let decoded = match number {
        0x0d => "\r".to_owned(),
        0x80..=0x9f => char::from_u32(number)
            .map(c1_as_windows_1252)
            .map_or_else(String::new, String::from),
        0 | 0xd800..=0xdfff | 0x11_0000.. => "\u{fffd}".to_owned(),
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        n if n & 0xfffe == 0xfffe => String::new(),
        n => char::from_u32(n).map_or_else(String::new, String::from),
    };
    Some((decoded, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_the_official_pipeline_on_known_strings() {
        // Expected values computed with wan/modules/tokenizers.py (ftfy 6.3.1, Python 3.11).
        let cases = [
            ("  a \t b\n\nc  ", "a b c"),
            ("&amp;lt;b&amp;gt; &copy &notin; &noti", "<b> © ∉ ¬i"),
            ("x < y &amp; z", "x < y & z"),
            (
                "“smart” ‘quotes’ ﬁne ＡＢＣ１２３　end",
                "\"smart\" 'quotes' fine ABC123 end",
            ),
            ("\u{1b}[31mred\u{1b}[0m bell\u{7}", "red bell"),
            ("e\u{301} \u{80}", "é €"),
            ("&#65;&#x42;&#0;&#1;&#128;&#xD800;", "AB\u{fffd}€\u{fffd}"),
            (
                "P&EACUTE;REZ &NTILDE; &LTIMES; &AMP; &nTILDE;",
                "PÉREZ Ñ <IMES; & &nTILDE;",
            ),
        ];
        for (raw, clean) in cases {
            assert_eq!(clean_prompt(raw), clean, "{raw:?}");
        }
    }
}
