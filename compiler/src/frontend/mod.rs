//! The `.snet` front end: text → tokens → syntax tree, with byte spans everywhere and every
//! error collected rather than thrown. Parsing never fails: it returns the tree it could build
//! and the diagnostics it found. Meaning (names, values, shapes) is checked by `lower`, not here.

pub mod ast;
pub mod lexer;
pub mod parser;

use crate::diagnostics::Diagnostic;

/// Lexes and parses a whole file.
pub fn parse(source: &str) -> (ast::Program, Vec<Diagnostic>) {
    let (tokens, mut diagnostics) = lexer::lex(source);
    let (program, parse_errors) = parser::parse(source, &tokens);
    diagnostics.extend(parse_errors);
    (program, diagnostics)
}
