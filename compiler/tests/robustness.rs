//! The front end never panics: mutated example programs (byte edits, token splices, digit
//! changes, truncations) go through parse, lowering and diagnostics rendering, and every run
//! ends in a graph that verifies or in at least one diagnostic.

use proptest::prelude::*;

const SOURCES: [&str; 4] = [
    include_str!("../../examples/models/sparsenet-40-24.snet"),
    include_str!("../../examples/models/sparsenet-bc-100-24.snet"),
    include_str!("../../examples/models/preact-resnet-cifar.snet"),
    include_str!("../../examples/models/sparsenet-121-32.snet"),
];

const SPLICES: [&str; 24] = [
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    "=",
    ":",
    "//",
    "/",
    "*",
    "-",
    "0",
    "1.5",
    "-3",
    "\"",
    "#",
    "block",
    "unit",
    "sum",
    "offsets(0)",
    "channels(",
    "\u{e9}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, usize),
    Digit(usize, u8),
    Truncate(usize),
    Swap(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 0..SPLICES.len()).prop_map(|(a, s)| Mutation::Insert(a, s)),
        (any::<usize>(), 0u8..10).prop_map(|(a, d)| Mutation::Digit(a, d)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
    ]
}

fn apply(source: &str, m: &Mutation) -> String {
    let mut b = source.as_bytes().to_vec();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match *m {
        Mutation::Delete(a, n) => {
            let s = at(a, b.len());
            let e = (s + n).min(b.len());
            b.drain(s..e);
        }
        Mutation::Insert(a, s) => {
            let p = at(a, b.len() + 1);
            b.splice(p..p, SPLICES[s].bytes());
        }
        Mutation::Digit(a, d) => {
            let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
            if !digits.is_empty() {
                b[digits[at(a, digits.len())]] = b'0' + d;
            }
        }
        Mutation::Truncate(a) => b.truncate(at(a, b.len() + 1)),
        Mutation::Swap(x, y) => {
            if !b.is_empty() {
                let (i, j) = (at(x, b.len()), at(y, b.len()));
                b.swap(i, j);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_programs_never_panic(which in 0..SOURCES.len(), ms in proptest::collection::vec(mutation(), 1..4)) {
        let mut source = SOURCES[which].to_string();
        for m in &ms {
            source = apply(&source, m);
        }
        let (graph, errors) = sparsec::compile_source("fuzz", &source);
        let rendered = sparsec::diagnostics::render("fuzz.snet", &source, &errors);
        match graph {
            Some(g) => {
                prop_assert!(errors.is_empty());
                prop_assert!(ir::verify::verify(&g).is_ok());
                let _ = ir::print::print(&g);
            }
            None => prop_assert!(rendered.contains("error["), "no graph and no error for:\n{source}"),
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let source = String::from_utf8_lossy(&bytes).into_owned();
        let (graph, errors) = sparsec::compile_source("fuzz", &source);
        let _ = sparsec::diagnostics::render("fuzz.snet", &source, &errors);
        prop_assert!(graph.is_some() || !errors.is_empty());
    }
}
