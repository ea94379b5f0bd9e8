//! The lexer: bytes → tokens with spans. Never fails: an unexpected character or an unterminated
//! string becomes a diagnostic and lexing goes on. `#` starts a comment to the end of the line.
//! Newlines are not tokens, but each token records whether a line break precedes it (the parser
//! uses that only to resynchronise after an error).

use crate::diagnostics::{Code, Diagnostic};
use ir::Span;

#[derive(Clone, Debug, PartialEq)]
pub enum TokenKind {
    Ident(String),
    Int(i64),
    Real(f64),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Eq,
    Colon,
    Semi,
    Dot,
    Plus,
    Minus,
    Star,
    Slash,
    SlashSlash,
    Percent,
    Eof,
}

impl TokenKind {
    /// How the token is named in "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match self {
            TokenKind::Ident(s) => format!("`{s}`"),
            TokenKind::Int(v) => format!("number `{v}`"),
            TokenKind::Real(v) => format!("number `{v:?}`"),
            TokenKind::Str(_) => "a string".into(),
            TokenKind::Eof => "end of file".into(),
            other => format!("`{}`", other.punct()),
        }
    }

    fn punct(&self) -> &'static str {
        match self {
            TokenKind::LParen => "(",
            TokenKind::RParen => ")",
            TokenKind::LBrace => "{",
            TokenKind::RBrace => "}",
            TokenKind::LBracket => "[",
            TokenKind::RBracket => "]",
            TokenKind::Comma => ",",
            TokenKind::Eq => "=",
            TokenKind::Colon => ":",
            TokenKind::Semi => ";",
            TokenKind::Dot => ".",
            TokenKind::Plus => "+",
            TokenKind::Minus => "-",
            TokenKind::Star => "*",
            TokenKind::Slash => "/",
            TokenKind::SlashSlash => "//",
            TokenKind::Percent => "%",
            _ => "?",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
    /// A line break stands between the previous token and this one.
    pub line_start: bool,
}

pub fn lex(source: &str) -> (Vec<Token>, Vec<Diagnostic>) {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut diagnostics = Vec::new();
    let mut i = 0;
    let mut line_start = true;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b'\n' => {
                line_start = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let kind = if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            TokenKind::Ident(source[start..i].to_string())
        } else if c.is_ascii_digit() {
            let (kind, end) = number(source, start, &mut diagnostics);
            i = end;
            kind
        } else if c == b'"' {
            i += 1;
            let mut value = String::new();
            let mut closed = false;
            while i < bytes.len() && bytes[i] != b'\n' {
                if bytes[i] == b'"' {
                    closed = true;
                    i += 1;
                    break;
                }
                if bytes[i] == b'\\' && i + 1 < bytes.len() && matches!(bytes[i + 1], b'"' | b'\\')
                {
                    value.push(bytes[i + 1] as char);
                    i += 2;
                    continue;
                }
                let ch = source[i..].chars().next().unwrap_or('\u{fffd}');
                value.push(ch);
                i += ch.len_utf8();
            }
            if !closed {
                diagnostics.push(
                    Diagnostic::new(
                        Code::UnterminatedString,
                        Span::new(start, i),
                        "unterminated string",
                    )
                    .label("this string is never closed")
                    .help("close it with `\"` on the same line"),
                );
            }
            TokenKind::Str(value)
        } else {
            i += 1;
            match c {
                b'(' => TokenKind::LParen,
                b')' => TokenKind::RParen,
                b'{' => TokenKind::LBrace,
                b'}' => TokenKind::RBrace,
                b'[' => TokenKind::LBracket,
                b']' => TokenKind::RBracket,
                b',' => TokenKind::Comma,
                b'=' => TokenKind::Eq,
                b':' => TokenKind::Colon,
                b';' => TokenKind::Semi,
                b'.' => TokenKind::Dot,
                b'+' => TokenKind::Plus,
                b'-' => TokenKind::Minus,
                b'*' => TokenKind::Star,
                b'%' => TokenKind::Percent,
                b'/' if bytes.get(i) == Some(&b'/') => {
                    i += 1;
                    TokenKind::SlashSlash
                }
                b'/' => TokenKind::Slash,
                _ => {
                    // Skip the whole UTF-8 character so spans stay on char boundaries.
                    let ch = source[start..].chars().next().unwrap_or('\u{fffd}');
                    i = start + ch.len_utf8();
                    diagnostics.push(
                        Diagnostic::new(
                            Code::UnexpectedChar,
                            Span::new(start, i),
                            format!("unexpected character `{}`", ch.escape_debug()),
                        )
                        .label("not part of the .snet language")
                        .help("comments start with `#`; names use letters, digits and `_`"),
                    );
                    line_start = false;
                    continue;
                }
            }
        };
        tokens.push(Token {
            kind,
            span: Span::new(start, i),
            line_start,
        });
        line_start = false;
    }
    tokens.push(Token {
        kind: TokenKind::Eof,
        span: Span::new(source.len(), source.len()),
        line_start: true,
    });
    (tokens, diagnostics)
}

/// Lexes an integer (`24`) or a real (`0.5`, `1e-5`, `2.5E3`) starting at `start`.
fn number(source: &str, start: usize, diagnostics: &mut Vec<Diagnostic>) -> (TokenKind, usize) {
    let bytes = source.as_bytes();
    let digits = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    let mut real = false;
    let mut malformed = false;
    if i < bytes.len() && bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        real = true;
        i = digits(i + 1);
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        real = true;
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        i = digits(i);
        malformed |= i == exp_start;
    }
    // A letter or a second dot glued to a number (`12ab`, `1.2.3`) makes it malformed.
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
    {
        malformed = true;
        i += 1;
    }
    let text = &source[start..i];
    let span = Span::new(start, i);
    if malformed {
        diagnostics.push(
            Diagnostic::new(
                Code::MalformedNumber,
                span,
                format!("malformed number `{text}`"),
            )
            .label("not a number")
            .help("write integers as `24`, reals as `0.5` or `1e-5`"),
        );
        return (TokenKind::Int(0), i);
    }
    if real {
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => (TokenKind::Real(v), i),
            _ => {
                diagnostics.push(
                    Diagnostic::new(
                        Code::NumberTooLarge,
                        span,
                        format!("number `{text}` is too large"),
                    )
                    .label("not a finite float")
                    .help("reals must fit a 64-bit float"),
                );
                (TokenKind::Real(0.0), i)
            }
        }
    } else {
        match text.parse::<i64>() {
            Ok(v) => (TokenKind::Int(v), i),
            Err(_) => {
                diagnostics.push(
                    Diagnostic::new(
                        Code::NumberTooLarge,
                        span,
                        format!("integer `{text}` is too large"),
                    )
                    .label("does not fit in 64 bits")
                    .help("integers range up to 9223372036854775807"),
                );
                (TokenKind::Int(0), i)
            }
        }
    }
}
