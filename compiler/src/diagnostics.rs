//! Diagnostics: one type for every error the front end reports, with a stable error code, a
//! primary span, secondary labels and one help line, rendered like rustc's by
//! codespan-reporting in exactly one place ([`render`]).
//!
//! Owns the error-code catalogue ([`Code`]). Must not decide *when* an error is reported: the
//! lexer, parser and lowering do that and push [`Diagnostic`]s; line and column numbers are
//! computed only here, from byte spans.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, Config};
use ir::Span;

/// Every error code sparsec reports. The number's first digit groups them: 0 lexing,
/// 1 syntax, 2 names, 3 values and types, 4 shapes and topology. Documented in
/// `docs/language.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    UnexpectedChar,
    UnterminatedString,
    MalformedNumber,
    NumberTooLarge,
    UnexpectedToken,
    UnclosedDelimiter,
    MissingInput,
    DuplicateItem,
    StageBeforeInput,
    NoStages,
    UnknownName,
    UnknownOp,
    UnknownUnit,
    UnknownArgument,
    DuplicateBinding,
    UnknownChoice,
    MissingArgument,
    DuplicateParam,
    UnnamedParams,
    DuplicateArgument,
    ExpectedInteger,
    NotPositive,
    DivisionByZero,
    WrongArity,
    WrongType,
    OutOfRange,
    ChannelMismatch,
    PoolNotDivisible,
    OffsetBeforeStart,
    BaseTooSmall,
    ZeroLayers,
    WindowTooLarge,
    NotFlat,
    UnitWidth,
    BadOffset,
    Shape,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::UnexpectedChar => "E0001",
            Code::UnterminatedString => "E0002",
            Code::MalformedNumber => "E0003",
            Code::NumberTooLarge => "E0004",
            Code::UnexpectedToken => "E0101",
            Code::UnclosedDelimiter => "E0102",
            Code::MissingInput => "E0103",
            Code::DuplicateItem => "E0104",
            Code::StageBeforeInput => "E0105",
            Code::NoStages => "E0106",
            Code::UnknownName => "E0201",
            Code::UnknownOp => "E0202",
            Code::UnknownUnit => "E0203",
            Code::UnknownArgument => "E0204",
            Code::DuplicateBinding => "E0205",
            Code::UnknownChoice => "E0206",
            Code::MissingArgument => "E0207",
            Code::DuplicateParam => "E0208",
            Code::UnnamedParams => "E0209",
            Code::DuplicateArgument => "E0210",
            Code::ExpectedInteger => "E0301",
            Code::NotPositive => "E0302",
            Code::DivisionByZero => "E0303",
            Code::WrongArity => "E0304",
            Code::WrongType => "E0305",
            Code::OutOfRange => "E0306",
            Code::ChannelMismatch => "E0401",
            Code::PoolNotDivisible => "E0402",
            Code::OffsetBeforeStart => "E0403",
            Code::BaseTooSmall => "E0404",
            Code::ZeroLayers => "E0405",
            Code::WindowTooLarge => "E0406",
            Code::NotFlat => "E0407",
            Code::UnitWidth => "E0408",
            Code::BadOffset => "E0409",
            Code::Shape => "E0410",
        }
    }
}

/// One error, located in the source by byte spans.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub span: Span,
    /// Text under the primary caret.
    pub label: String,
    /// Secondary spans with their text.
    pub notes: Vec<(Span, String)>,
    pub help: Option<String>,
    /// A consequence of an error already reported (a use of a binding whose definition
    /// failed): kept out of the output.
    pub follow_on: bool,
}

impl Diagnostic {
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            span,
            label: String::new(),
            notes: Vec::new(),
            help: None,
            follow_on: false,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn note(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.notes.push((span, text.into()));
        self
    }

    pub fn follow_on(mut self) -> Diagnostic {
        self.follow_on = true;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

/// Renders diagnostics as rustc does (`error[E0201]: ...`, ` ┌─ file:line:col`, the source line
/// with carets, `= help: ...`), without colour, one blank line between them.
pub fn render(file_name: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    let file = SimpleFile::new(file_name, source);
    let config = Config::default();
    let mut out = String::new();
    for d in diagnostics {
        let clamp = |s: Span| {
            let end = (s.end as usize).min(source.len());
            let start = (s.start as usize).min(end);
            start..end
        };
        let mut labels = vec![Label::primary((), clamp(d.span)).with_message(&d.label)];
        labels.extend(
            d.notes
                .iter()
                .map(|(s, text)| Label::secondary((), clamp(*s)).with_message(text)),
        );
        let mut cs = CsDiagnostic::error()
            .with_code(d.code.as_str())
            .with_message(&d.message)
            .with_labels(labels);
        if let Some(h) = &d.help {
            cs = cs.with_notes(vec![format!("help: {h}")]);
        }
        match term::emit_into_string(&config, &file, &cs) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!(
                "error[{}]: {} ({e})\n",
                d.code.as_str(),
                d.message
            )),
        }
    }
    out
}
