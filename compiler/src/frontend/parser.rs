//! Recursive-descent parser: tokens → [`Program`]. Never fails and never panics: on an error it
//! records a diagnostic and resynchronises (at the next item keyword at the start of a line, or
//! the next line inside a body), so one run reports every syntax error it can.
//!
//! Grammar (docs/language.md has the full reference):
//! ```text
//! program := item*
//! item    := 'model' STRING | 'input' '[' expr ',' expr ',' expr ']' | 'let' IDENT '=' expr
//!          | 'unit' IDENT '{' op* '}' | (IDENT ':')? stage
//! stage   := ('stem' | 'block' | 'transition' | 'head') ('(' args ')')? ('{' op* '}')?
//! op      := (path '=')? IDENT ('(' args ')')? ';'?       path := IDENT ('.' IDENT)* | STRING
//! args    := (arg (',' arg)* ','?)?                        arg := (IDENT '=')? expr
//! expr    := term (('+' | '-') term)*    term := unary (('*' | '/' | '//' | '%') unary)*
//! unary   := '-' unary | atom            atom := INT | REAL | STRING | IDENT ('(' args ')')?
//!          | '(' expr ')' | '[' (expr (',' expr)*)? ']'
//! ```

use super::ast::*;
use super::lexer::{Token, TokenKind};
use crate::diagnostics::{Code, Diagnostic};
use ir::Span;

const ITEM_KEYWORDS: [&str; 8] = [
    "model",
    "input",
    "let",
    "unit",
    "stem",
    "block",
    "transition",
    "head",
];
/// Nesting limit for expressions, so hostile input cannot overflow the stack.
const MAX_DEPTH: u32 = 64;

pub fn parse(source: &str, tokens: &[Token]) -> (Program, Vec<Diagnostic>) {
    let mut p = Parser {
        tokens,
        pos: 0,
        diagnostics: Vec::new(),
        depth: 0,
        source_len: source.len(),
    };
    let mut items = Vec::new();
    while !p.at_eof() {
        let before = p.pos;
        match p.item() {
            Some(item) => items.push(item),
            None => p.recover_to_item(),
        }
        if p.pos == before {
            p.pos += 1;
        }
    }
    (Program { items }, p.diagnostics)
}

/// Marker for "an error was reported; the caller should resynchronise".
type Parsed<T> = Option<T>;

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    diagnostics: Vec<Diagnostic>,
    depth: u32,
    source_len: usize,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> &'t Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, n: usize) -> &'t Token {
        &self.tokens[(self.pos + n).min(self.tokens.len() - 1)]
    }

    fn at_eof(&self) -> bool {
        self.peek().kind == TokenKind::Eof
    }

    fn bump(&mut self) -> &'t Token {
        let t = self.peek();
        if t.kind != TokenKind::Eof {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, kind: &TokenKind) -> Option<&'t Token> {
        if &self.peek().kind == kind {
            Some(self.bump())
        } else {
            None
        }
    }

    fn prev_end(&self) -> usize {
        if self.pos == 0 {
            0
        } else {
            self.tokens[self.pos - 1].span.end as usize
        }
    }

    fn error_expected(&mut self, what: &str, help: &str) {
        let t = self.peek();
        let code = if t.kind == TokenKind::Eof {
            Code::UnclosedDelimiter
        } else {
            Code::UnexpectedToken
        };
        let span = if t.kind == TokenKind::Eof {
            Span::new(self.source_len, self.source_len)
        } else {
            t.span
        };
        self.diagnostics.push(
            Diagnostic::new(
                code,
                span,
                format!("expected {what}, found {}", t.kind.describe()),
            )
            .label(format!("expected {what}"))
            .help(help),
        );
    }

    fn expect(&mut self, kind: TokenKind, what: &str, help: &str) -> Parsed<&'t Token> {
        if let Some(t) = self.eat(&kind) {
            return Some(t);
        }
        self.error_expected(what, help);
        None
    }

    fn ident(&mut self, what: &str, help: &str) -> Parsed<Ident> {
        if let TokenKind::Ident(name) = &self.peek().kind {
            let span = self.bump().span;
            return Some(Ident {
                name: name.clone(),
                span,
            });
        }
        self.error_expected(what, help);
        None
    }

    /// Skips to the next item keyword (or label) that starts a line, outside any braces.
    fn recover_to_item(&mut self) {
        let mut depth = 0i32;
        let start = self.pos;
        while !self.at_eof() {
            let t = self.peek();
            if self.pos > start && t.line_start && depth <= 0 && self.starts_item() {
                return;
            }
            match t.kind {
                TokenKind::LBrace => depth += 1,
                TokenKind::RBrace => depth -= 1,
                _ => {}
            }
            self.bump();
        }
    }

    fn starts_item(&self) -> bool {
        match &self.peek().kind {
            TokenKind::Ident(name) => {
                ITEM_KEYWORDS.contains(&name.as_str())
                    || (self.peek_at(1).kind == TokenKind::Colon
                        && matches!(&self.peek_at(2).kind, TokenKind::Ident(k) if is_stage(k)))
            }
            _ => false,
        }
    }

    fn item(&mut self) -> Parsed<Item> {
        let start = self.peek().span;
        let TokenKind::Ident(word) = &self.peek().kind else {
            self.error_expected(
                "an item",
                "a file is a list of items: `model`, `input`, `let`, `unit`, `stem`, `block`, `transition`, `head`",
            );
            return None;
        };
        let kind = match word.as_str() {
            "model" => {
                self.bump();
                let t = self.peek();
                let TokenKind::Str(name) = &t.kind else {
                    self.error_expected("a model name in quotes", "write `model \"my-net\"`");
                    return None;
                };
                self.bump();
                ItemKind::Model {
                    name: name.clone(),
                    name_span: t.span,
                }
            }
            "input" => {
                self.bump();
                self.expect(
                    TokenKind::LBracket,
                    "`[`",
                    "write the input as `input [channels, height, width]`",
                )?;
                let dims = self.expr_list(TokenKind::RBracket)?;
                ItemKind::Input { dims }
            }
            "let" => {
                self.bump();
                let name = self.ident("a name", "write `let k = 24`")?;
                self.expect(TokenKind::Eq, "`=`", "write `let k = 24`")?;
                let value = self.expr()?;
                ItemKind::Let { name, value }
            }
            "unit" => {
                self.bump();
                let name = self.ident(
                    "a unit name",
                    "write `unit basic { bn1 = batch_norm() ... }`",
                )?;
                let body = self.body()?;
                ItemKind::Unit { name, body }
            }
            w if is_stage(w) => ItemKind::Stage(self.stage(None)?),
            _ if self.peek_at(1).kind == TokenKind::Colon => {
                let label = self.ident("a label", "")?;
                self.bump();
                match &self.peek().kind {
                    TokenKind::Ident(w) if is_stage(w) => ItemKind::Stage(self.stage(Some(label))?),
                    _ => {
                        self.error_expected(
                            "`stem`, `block`, `transition` or `head` after a label",
                            "a label names a stage: `b1: block(...)`",
                        );
                        return None;
                    }
                }
            }
            other => {
                let help = match suggest(other, &ITEM_KEYWORDS) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "a file is a list of items: `model`, `input`, `let`, `unit`, `stem`, `block`, `transition`, `head`".into(),
                };
                self.error_expected("an item", &help);
                return None;
            }
        };
        Some(Item {
            kind,
            span: start.to(Span::new(self.prev_end(), self.prev_end())),
        })
    }

    fn stage(&mut self, label: Option<Ident>) -> Parsed<Stage> {
        let kw = self.bump();
        let kind = match &kw.kind {
            TokenKind::Ident(w) => match w.as_str() {
                "stem" => StageKind::Stem,
                "block" => StageKind::Block,
                "transition" => StageKind::Transition,
                _ => StageKind::Head,
            },
            _ => StageKind::Head,
        };
        let args = if self.eat(&TokenKind::LParen).is_some() {
            self.args()?
        } else {
            Vec::new()
        };
        let body = if self.peek().kind == TokenKind::LBrace {
            Some(self.body()?)
        } else {
            None
        };
        Some(Stage {
            label,
            kind,
            keyword_span: kw.span,
            args,
            body,
        })
    }

    /// `{ op* }`; recovers inside the braces line by line.
    fn body(&mut self) -> Parsed<Vec<OpStmt>> {
        let open = self.expect(
            TokenKind::LBrace,
            "`{`",
            "a body is a list of ops in braces: `{ relu() }`",
        )?;
        let mut ops = Vec::new();
        loop {
            while self.eat(&TokenKind::Semi).is_some() {}
            match &self.peek().kind {
                TokenKind::RBrace => {
                    self.bump();
                    return Some(ops);
                }
                TokenKind::Eof => {
                    let at = self.source_len;
                    self.diagnostics.push(
                        Diagnostic::new(
                            Code::UnclosedDelimiter,
                            Span::new(at, at),
                            "unclosed body: expected `}`, found end of file",
                        )
                        .label("expected `}` here")
                        .note(open.span, "this `{` is never closed")
                        .help("close the body with `}`"),
                    );
                    return Some(ops);
                }
                _ => {}
            }
            if self.peek().line_start
                && self.starts_item()
                && !matches!(self.peek_at(1).kind, TokenKind::Eq | TokenKind::Dot)
            {
                // A top-level item where an op should be: the body was never closed.
                let at = self.prev_end();
                self.diagnostics.push(
                    Diagnostic::new(
                        Code::UnclosedDelimiter,
                        Span::new(at, at),
                        "unclosed body: expected `}`",
                    )
                    .label("expected `}` here")
                    .note(open.span, "this `{` is never closed")
                    .help("close the body with `}` before the next item"),
                );
                return Some(ops);
            }
            let before = self.pos;
            match self.op_stmt() {
                Some(op) => ops.push(op),
                None => {
                    // Skip to the next line (or `}`), so each bad line is reported once.
                    if self.pos == before {
                        self.bump();
                    }
                    while !self.at_eof()
                        && !self.peek().line_start
                        && self.peek().kind != TokenKind::RBrace
                    {
                        self.bump();
                    }
                }
            }
        }
    }

    fn op_stmt(&mut self) -> Parsed<OpStmt> {
        let start = self.peek().span;
        let name = match (&self.peek().kind, &self.peek_at(1).kind) {
            (TokenKind::Str(s), _) => {
                let span = self.bump().span;
                self.expect(
                    TokenKind::Eq,
                    "`=`",
                    "a quoted name is followed by `= op(...)`",
                )?;
                Some((s.clone(), span))
            }
            (TokenKind::Ident(_), TokenKind::Eq | TokenKind::Dot) => {
                let first = self.ident("a name", "")?;
                let mut path = first.name;
                let mut span = first.span;
                while self.eat(&TokenKind::Dot).is_some() {
                    let part = self.ident(
                        "a name after `.`",
                        "parameter paths look like `classifier.linear`",
                    )?;
                    path.push('.');
                    path.push_str(&part.name);
                    span = span.to(part.span);
                }
                self.expect(TokenKind::Eq, "`=`", "write `name = op(...)`")?;
                Some((path, span))
            }
            _ => None,
        };
        let op = self.ident("an op", "ops are `conv`, `batch_norm`, `relu`, `avg_pool`, `max_pool`, `global_avg_pool`, `linear`")?;
        let args = if self.eat(&TokenKind::LParen).is_some() {
            self.args()?
        } else {
            Vec::new()
        };
        Some(OpStmt {
            name,
            op,
            args,
            span: start.to(Span::new(self.prev_end(), self.prev_end())),
        })
    }

    /// Arguments after `(` up to and including `)`.
    fn args(&mut self) -> Parsed<Vec<Arg>> {
        let mut args = Vec::new();
        loop {
            if self.eat(&TokenKind::RParen).is_some() {
                return Some(args);
            }
            let start = self.peek().span;
            let name = match (&self.peek().kind, &self.peek_at(1).kind) {
                (TokenKind::Ident(n), TokenKind::Eq) => {
                    let span = self.bump().span;
                    self.bump();
                    Some(Ident {
                        name: n.clone(),
                        span,
                    })
                }
                _ => None,
            };
            let value = self.expr()?;
            let span = start.to(value.span);
            args.push(Arg { name, value, span });
            if self.eat(&TokenKind::Comma).is_none() {
                self.expect(
                    TokenKind::RParen,
                    "`,` or `)`",
                    "separate arguments with `,` and close them with `)`",
                )?;
                return Some(args);
            }
        }
    }

    /// Expressions after an opening bracket up to the closing `close`.
    fn expr_list(&mut self, close: TokenKind) -> Parsed<Vec<Expr>> {
        let mut items = Vec::new();
        loop {
            if self.eat(&close).is_some() {
                return Some(items);
            }
            items.push(self.expr()?);
            if self.eat(&TokenKind::Comma).is_none() {
                self.expect(
                    close,
                    "`,` or `]`",
                    "separate list elements with `,` and close the list with `]`",
                )?;
                return Some(items);
            }
        }
    }

    fn expr(&mut self) -> Parsed<Expr> {
        self.depth += 1;
        let result = if self.depth > MAX_DEPTH {
            let span = self.peek().span;
            self.diagnostics.push(
                Diagnostic::new(Code::UnexpectedToken, span, "expression nested too deeply")
                    .label(format!("more than {MAX_DEPTH} levels"))
                    .help("split it with `let` bindings"),
            );
            None
        } else {
            self.sum()
        };
        self.depth -= 1;
        result
    }

    fn sum(&mut self) -> Parsed<Expr> {
        let mut lhs = self.term()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Plus => BinOp::Add,
                TokenKind::Minus => BinOp::Sub,
                _ => return Some(lhs),
            };
            self.bump();
            let rhs = self.term()?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
    }

    fn term(&mut self) -> Parsed<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Star => BinOp::Mul,
                TokenKind::Slash => BinOp::Div,
                TokenKind::SlashSlash => BinOp::FloorDiv,
                TokenKind::Percent => BinOp::Rem,
                _ => return Some(lhs),
            };
            self.bump();
            let rhs = self.unary()?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                span,
            };
        }
    }

    fn unary(&mut self) -> Parsed<Expr> {
        if let Some(t) = self.eat(&TokenKind::Minus) {
            self.depth += 1;
            let inner = if self.depth > MAX_DEPTH {
                self.expr()
            } else {
                self.unary()
            };
            self.depth -= 1;
            let inner = inner?;
            let span = t.span.to(inner.span);
            return Some(Expr {
                kind: ExprKind::Neg(Box::new(inner)),
                span,
            });
        }
        self.atom()
    }

    fn atom(&mut self) -> Parsed<Expr> {
        let t = self.peek();
        let kind = match &t.kind {
            TokenKind::Int(v) => ExprKind::Int(*v),
            TokenKind::Real(v) => ExprKind::Real(*v),
            TokenKind::Str(s) => ExprKind::Str(s.clone()),
            TokenKind::Ident(name) => {
                self.bump();
                if self.eat(&TokenKind::LParen).is_some() {
                    let callee = Ident {
                        name: name.clone(),
                        span: t.span,
                    };
                    let args = self.args()?;
                    let span = t.span.to(Span::new(self.prev_end(), self.prev_end()));
                    return Some(Expr {
                        kind: ExprKind::Call(callee, args),
                        span,
                    });
                }
                return Some(Expr {
                    kind: ExprKind::Name(name.clone()),
                    span: t.span,
                });
            }
            TokenKind::LParen => {
                self.bump();
                let inner = self.expr()?;
                self.expect(TokenKind::RParen, "`)`", "close the parenthesis")?;
                return Some(inner);
            }
            TokenKind::LBracket => {
                self.bump();
                let items = self.expr_list(TokenKind::RBracket)?;
                let span = t.span.to(Span::new(self.prev_end(), self.prev_end()));
                return Some(Expr {
                    kind: ExprKind::List(items),
                    span,
                });
            }
            _ => {
                self.error_expected(
                    "an expression",
                    "expressions are numbers, names, strings, calls like `floor(x)` and arithmetic",
                );
                return None;
            }
        };
        self.bump();
        Some(Expr { kind, span: t.span })
    }
}

fn is_stage(word: &str) -> bool {
    matches!(word, "stem" | "block" | "transition" | "head")
}

/// The closest candidate by edit distance, if close enough to be a likely typo. The distance
/// counts a swap of two adjacent characters as one edit (`unti`, `uint` -> `unit`), as rustc's
/// suggestions do.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|&(d, c)| d <= (c.chars().count() / 3).max(1))
        .min()
        .map(|(_, c)| c)
}

/// Damerau-Levenshtein distance in its optimal-string-alignment form: insertions, deletions,
/// substitutions and transpositions of adjacent characters each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for transpositions), one back, and the current one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 0..a.len() {
        let mut cur = vec![i + 1; b.len() + 1];
        for j in 0..b.len() {
            let mut d = (prev[j] + usize::from(a[i] != b[j]))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod suggest_tests {
    use super::{edit_distance, suggest};

    #[test]
    fn a_swap_is_one_edit() {
        assert_eq!(edit_distance("unti", "unit"), 1);
        assert_eq!(edit_distance("uint", "unit"), 1);
        assert_eq!(edit_distance("blok", "block"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let keywords = ["model", "input", "let", "unit", "block"];
        assert_eq!(suggest("unti", &keywords), Some("unit"));
        assert_eq!(suggest("uint", &keywords), Some("unit"));
        assert_eq!(suggest("xyz", &keywords), None);
    }
}

#[cfg(test)]
mod tests {
    //! Focused parser tests: precedence, spans, layout, labels and recovery on small inputs.
    //! (Whole files and rendered diagnostics are `tests/snapshots.rs`.)

    use crate::diagnostics::Code;
    use crate::frontend::ast::{BinOp, ExprKind, ItemKind, Program, StageKind};

    fn parse(source: &str) -> (Program, Vec<Code>) {
        let (program, diagnostics) = crate::frontend::parse(source);
        (program, diagnostics.iter().map(|d| d.code).collect())
    }

    #[test]
    fn multiplication_binds_tighter_than_addition() {
        let (p, errors) = parse("let x = 1 + 2 * 3 - 4");
        assert_eq!(errors, []);
        let ItemKind::Let { name, value } = &p.items[0].kind else {
            panic!("not a let: {:?}", p.items[0].kind);
        };
        assert_eq!(name.name, "x");
        // (1 + (2 * 3)) - 4
        let ExprKind::Binary(BinOp::Sub, left, right) = &value.kind else {
            panic!("top is not `-`: {:?}", value.kind);
        };
        assert!(matches!(right.kind, ExprKind::Int(4)));
        let ExprKind::Binary(BinOp::Add, one, product) = &left.kind else {
            panic!("left is not `+`: {:?}", left.kind);
        };
        assert!(matches!(one.kind, ExprKind::Int(1)));
        assert!(matches!(product.kind, ExprKind::Binary(BinOp::Mul, _, _)));
    }

    #[test]
    fn spans_are_byte_ranges_of_the_source() {
        let source = "input [3, 32, 32]\nlet growth = 2 * 12\n";
        let (p, errors) = parse(source);
        assert_eq!(errors, []);
        let ItemKind::Let { name, value } = &p.items[1].kind else {
            panic!("not a let: {:?}", p.items[1].kind);
        };
        let text = |s: ir::Span| &source[s.start as usize..s.end as usize];
        assert_eq!(text(name.span), "growth");
        assert_eq!(text(value.span), "2 * 12");
        assert_eq!(text(p.items[0].span), "input [3, 32, 32]");
    }

    #[test]
    fn ops_need_no_separators_and_names_may_be_dotted() {
        let (p, errors) =
            parse("head { bn1 = bn() relu(); classifier.linear = linear(10, bias = false) }");
        assert_eq!(errors, []);
        let ItemKind::Stage(stage) = &p.items[0].kind else {
            panic!("not a stage: {:?}", p.items[0].kind);
        };
        assert_eq!(stage.kind, StageKind::Head);
        let body = stage.body.as_deref().unwrap_or_default();
        let ops: Vec<(Option<&str>, &str)> = body
            .iter()
            .map(|o| (o.name.as_ref().map(|n| n.0.as_str()), o.op.name.as_str()))
            .collect();
        assert_eq!(
            ops,
            [
                (Some("bn1"), "bn"),
                (None, "relu"),
                (Some("classifier.linear"), "linear")
            ]
        );
        let args = &body[2].args;
        assert_eq!(args.len(), 2);
        assert!(args[0].name.is_none());
        assert_eq!(args[1].name.as_ref().map(|n| n.name.as_str()), Some("bias"));
    }

    #[test]
    fn a_labelled_block_keeps_its_label_and_named_arguments() {
        let (p, errors) = parse("b1: block(layers = 2, growth = 4, unit = u, links = sparse(2))");
        assert_eq!(errors, []);
        let ItemKind::Stage(stage) = &p.items[0].kind else {
            panic!("not a stage: {:?}", p.items[0].kind);
        };
        assert_eq!(stage.kind, StageKind::Block);
        assert_eq!(stage.label.as_ref().map(|l| l.name.as_str()), Some("b1"));
        let names: Vec<&str> = stage
            .args
            .iter()
            .filter_map(|a| a.name.as_ref().map(|n| n.name.as_str()))
            .collect();
        assert_eq!(names, ["layers", "growth", "unit", "links"]);
        assert!(matches!(&stage.args[3].value.kind, ExprKind::Call(f, _) if f.name == "sparse"));
    }

    #[test]
    fn an_error_in_one_item_does_not_lose_the_next() {
        let (p, errors) = parse("let = 3\nlet y = 2\n");
        assert!(!errors.is_empty());
        assert!(
            p.items
                .iter()
                .any(|i| matches!(&i.kind, ItemKind::Let { name, .. } if name.name == "y")),
            "{:?}",
            p.items
        );
    }

    #[test]
    fn an_unclosed_body_is_reported_and_the_next_item_still_parsed() {
        let (p, errors) = parse("stem { conv0 = conv(4, kernel = 3)\nhead { relu() }\n");
        assert!(errors.contains(&Code::UnclosedDelimiter), "{errors:?}");
        let stages: Vec<StageKind> = p
            .items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::Stage(s) => Some(s.kind),
                _ => None,
            })
            .collect();
        assert_eq!(stages, [StageKind::Stem, StageKind::Head]);
    }

    #[test]
    fn no_prefix_of_a_real_model_makes_the_parser_panic() {
        let source = include_str!("../../../examples/models/sparsenet-bc-100-24.snet");
        for end in (0..source.len()).filter(|&i| source.is_char_boundary(i)) {
            let _ = parse(&source[..end]);
        }
    }
}
