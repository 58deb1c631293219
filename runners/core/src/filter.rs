//! The test filter language, as the reference system writes it:
//!
//! ```text
//! or     := and (("|" | "||" | "or") and)*
//! and    := not (("&" | "&&" | "and" | "+" | "\" | "-" | "minus") not)*
//! not    := ("!" | "~" | "not") not | simple
//! simple := "(" or ")" | selector ["()"] | selector "." matcher DELIMITED
//! ```
//!
//! `A - B` is `A and not B`. A compound selector's argument is delimited by `()`, `[]`, `{}`,
//! `<>` or `//`; brackets of the same kind may nest inside if balanced. Matchers: `equals`,
//! `contains`, `starts_with`, `ends_with`, `matches` (a regex), `globs` (a glob). Selectors and
//! matchers may be abbreviated to any prefix at least as long as their minimum.
//!
//! Evaluation is three-valued: a subject may not know a value yet (a package before it is
//! built), and a pattern whose answer depends on it is then unknown.

use std::fmt;

/// A selector's name and the shortest prefix that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selector {
    pub name: &'static str,
    pub min: &'static str,
}

/// What a runner's patterns may name, besides `all`/`any`/`true` and `none`/`false`.
#[derive(Clone, Copy, Debug)]
pub struct Language {
    pub simple: &'static [Selector],
    pub compound: &'static [Selector],
}

const ALWAYS: [Selector; 5] = [
    Selector { name: "all", min: "al" },
    Selector { name: "any", min: "an" },
    Selector { name: "true", min: "tr" },
    Selector { name: "none", min: "n" },
    Selector { name: "false", min: "f" },
];

const MATCHERS: [Selector; 6] = [
    Selector { name: "equals", min: "eq" },
    Selector { name: "contains", min: "c" },
    Selector { name: "starts_with", min: "s" },
    Selector { name: "ends_with", min: "en" },
    Selector { name: "matches", min: "m" },
    Selector { name: "globs", min: "g" },
];

/// What a pattern is evaluated against.
pub trait Subject {
    /// A simple selector of the runner's language: `None` if not known yet.
    fn is(&self, selector: &str) -> Option<bool>;
    /// A compound selector's value: `Some(None)` if the subject has none (the pattern is then
    /// false), `None` if not known yet.
    fn value(&self, selector: &str) -> Option<Option<&str>>;
}

#[derive(Clone, Debug)]
pub enum Matcher {
    Equals(String),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Matches(regex::Regex),
    Globs(globset::GlobMatcher),
}

impl Matcher {
    pub fn is_match(&self, value: &str) -> bool {
        match self {
            Matcher::Equals(s) => value == s,
            Matcher::Contains(s) => value.contains(s.as_str()),
            Matcher::StartsWith(s) => value.starts_with(s.as_str()),
            Matcher::EndsWith(s) => value.ends_with(s.as_str()),
            Matcher::Matches(re) => re.is_match(value),
            Matcher::Globs(glob) => glob.is_match(value),
        }
    }
}

/// A parsed pattern.
#[derive(Clone, Debug)]
pub enum Pattern {
    True,
    False,
    Simple(&'static str),
    Compound { selector: &'static str, matcher: Matcher },
    Not(Box<Pattern>),
    And(Box<Pattern>, Box<Pattern>),
    Or(Box<Pattern>, Box<Pattern>),
}

impl Pattern {
    /// True, false, or `None` when the subject does not know enough yet.
    pub fn eval(&self, subject: &dyn Subject) -> Option<bool> {
        match self {
            Pattern::True => Some(true),
            Pattern::False => Some(false),
            Pattern::Simple(selector) => subject.is(selector),
            Pattern::Compound { selector, matcher } => {
                subject.value(selector).map(|value| value.is_some_and(|v| matcher.is_match(v)))
            }
            Pattern::Not(inner) => inner.eval(subject).map(|b| !b),
            Pattern::And(a, b) => match (a.eval(subject), b.eval(subject)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Pattern::Or(a, b) => match (a.eval(subject), b.eval(subject)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
}

/// A pattern that did not parse: where (1-based column, in characters) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// Parses `text` in `language`.
pub fn parse(text: &str, language: &Language) -> Result<Pattern, ParseError> {
    let mut parser = Parser { chars: text.chars().collect(), at: 0, language };
    let pattern = parser.or()?;
    parser.skip_space();
    if parser.at < parser.chars.len() {
        return Err(
            parser.error(format!("unexpected {}; expected an operator or the end", parser.describe()))
        );
    }
    Ok(pattern)
}

/// Tests are selected when they match any include (all, if there is none) and no exclude.
#[derive(Clone, Debug)]
pub struct Selection {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Selection {
    /// Parses `-i` and `-x` patterns; an error names the pattern and the column.
    pub fn new(include: &[String], exclude: &[String], language: &Language) -> Result<Self, String> {
        let parse_all = |texts: &[String], option: &str| -> Result<Vec<Pattern>, String> {
            texts.iter().map(|t| parse(t, language).map_err(|e| format!("{option} {t:?}: {e}"))).collect()
        };
        let mut include = parse_all(include, "--include")?;
        if include.is_empty() {
            include.push(Pattern::True);
        }
        Ok(Self { include, exclude: parse_all(exclude, "--exclude")? })
    }

    /// Whether the subject is selected (`None`: not known yet).
    pub fn eval(&self, subject: &dyn Subject) -> Option<bool> {
        let any = |patterns: &[Pattern]| {
            let mut unknown = false;
            for pattern in patterns {
                match pattern.eval(subject) {
                    Some(true) => return Some(true),
                    None => unknown = true,
                    Some(false) => {}
                }
            }
            if unknown { None } else { Some(false) }
        };
        match (any(&self.include), any(&self.exclude)) {
            (Some(false), _) | (_, Some(true)) => Some(false),
            (Some(true), Some(false)) => Some(true),
            _ => None,
        }
    }
}

struct Parser<'a> {
    chars: Vec<char>,
    at: usize,
    language: &'a Language,
}

impl Parser<'_> {
    fn error(&self, message: String) -> ParseError {
        ParseError { column: self.at + 1, message }
    }

    fn describe(&self) -> String {
        match self.chars.get(self.at) {
            Some(c) => format!("`{c}`"),
            None => "end of pattern".into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Whether the text at the cursor is `word` standing alone (whitespace or a bracket after
    /// it); consumes it if so.
    fn word_op(&mut self, word: &str) -> bool {
        let len = word.chars().count();
        let matches = self.chars.len() >= self.at + len
            && self.chars[self.at..self.at + len].iter().copied().eq(word.chars())
            && self.chars.get(self.at + len).is_none_or(|c| c.is_whitespace() || *c == '(');
        if matches {
            self.at += len;
        }
        matches
    }

    fn symbol_op(&mut self, ops: &[&str]) -> bool {
        for op in ops {
            let len = op.chars().count();
            if self.chars.len() >= self.at + len
                && self.chars[self.at..self.at + len].iter().copied().eq(op.chars())
            {
                self.at += len;
                return true;
            }
        }
        false
    }

    fn or(&mut self) -> Result<Pattern, ParseError> {
        let mut left = self.and()?;
        loop {
            let before = self.at;
            let spaced = self.space_before();
            if self.symbol_op(&["||", "|"]) || (spaced && self.word_op("or")) {
                let right = self.and()?;
                left = Pattern::Or(Box::new(left), Box::new(right));
            } else {
                self.at = before;
                return Ok(left);
            }
        }
    }

    fn and(&mut self) -> Result<Pattern, ParseError> {
        let mut left = self.not()?;
        loop {
            let before = self.at;
            let spaced = self.space_before();
            if self.symbol_op(&["&&", "&", "+"]) || (spaced && self.word_op("and")) {
                let right = self.not()?;
                left = Pattern::And(Box::new(left), Box::new(right));
            } else if self.symbol_op(&["\\", "-"]) || (spaced && self.word_op("minus")) {
                let right = self.not()?;
                left = Pattern::And(Box::new(left), Box::new(Pattern::Not(Box::new(right))));
            } else {
                self.at = before;
                return Ok(left);
            }
        }
    }

    /// Skips whitespace; whether there was any (word operators need it on both sides).
    fn space_before(&mut self) -> bool {
        let before = self.at;
        self.skip_space();
        self.at > before
    }

    fn not(&mut self) -> Result<Pattern, ParseError> {
        self.skip_space();
        if self.symbol_op(&["!", "~"]) || self.word_op("not") {
            return Ok(Pattern::Not(Box::new(self.not()?)));
        }
        self.simple()
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    fn simple(&mut self) -> Result<Pattern, ParseError> {
        self.skip_space();
        if self.peek() == Some('(') {
            self.at += 1;
            let inner = self.or()?;
            self.skip_space();
            if self.peek() != Some(')') {
                return Err(self.error(format!("expected `)`, found {}", self.describe())));
            }
            self.at += 1;
            return Ok(inner);
        }
        let start = self.at;
        let word = self.word();
        if word.is_empty() {
            return Err(self.error(format!("expected a selector, `(` or `!`, found {}", self.describe())));
        }
        if self.peek() == Some('.') {
            self.at += 1;
            let Some(selector) = resolve(&word, self.language.compound) else {
                self.at = start;
                return Err(self.error(unknown("compound selector", &word, self.language.compound)));
            };
            let matcher_at = self.at;
            let matcher = self.word();
            let Some(matcher) = resolve(&matcher, &MATCHERS) else {
                self.at = matcher_at;
                return Err(self.error(unknown("matcher", &matcher, &MATCHERS)));
            };
            let argument_at = self.at;
            let argument = self.delimited()?;
            let matcher = match matcher {
                "equals" => Matcher::Equals(argument),
                "contains" => Matcher::Contains(argument),
                "starts_with" => Matcher::StartsWith(argument),
                "ends_with" => Matcher::EndsWith(argument),
                "matches" => Matcher::Matches(regex::Regex::new(&argument).map_err(|e| ParseError {
                    column: argument_at + 2,
                    message: format!(
                        "bad regex: {}",
                        e.to_string().lines().last().unwrap_or_default().trim().trim_start_matches("error: ")
                    ),
                })?),
                _ => Matcher::Globs(
                    globset::Glob::new(&argument)
                        .map_err(|e| ParseError {
                            column: argument_at + 2,
                            message: format!("bad glob: {e}"),
                        })?
                        .compile_matcher(),
                ),
            };
            return Ok(Pattern::Compound { selector, matcher });
        }
        let pattern = if let Some(name) = resolve(&word, &ALWAYS) {
            if matches!(name, "all" | "any" | "true") { Pattern::True } else { Pattern::False }
        } else if let Some(selector) = resolve(&word, self.language.simple) {
            Pattern::Simple(selector)
        } else {
            self.at = start;
            let all: Vec<Selector> = ALWAYS.iter().chain(self.language.simple).copied().collect();
            return Err(self.error(unknown("selector", &word, &all)));
        };
        if self.chars.get(self.at..self.at + 2) == Some(&['(', ')']) {
            self.at += 2;
        }
        Ok(pattern)
    }

    /// A compound selector's argument, with its delimiters.
    fn delimited(&mut self) -> Result<String, ParseError> {
        let open = self.peek();
        let close = match open {
            Some('(') => ')',
            Some('[') => ']',
            Some('{') => '}',
            Some('<') => '>',
            Some('/') => '/',
            _ => {
                return Err(self.error(format!(
                    "expected the argument in (), [], {{}}, <> or //, found {}",
                    self.describe()
                )));
            }
        };
        let open = open.expect("matched above");
        let start = self.at;
        self.at += 1;
        let mut depth = 0usize;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                self.at = start;
                return Err(self.error(format!("`{open}` is never closed with `{close}`")));
            };
            self.at += 1;
            if c == close && depth == 0 {
                return Ok(out);
            }
            if c == close {
                depth -= 1;
            } else if c == open && open != close {
                depth += 1;
            }
            out.push(c);
        }
    }
}

/// The selector `word` names: the one whose name starts with it, and which it names at least
/// the minimum of.
fn resolve(word: &str, selectors: &[Selector]) -> Option<&'static str> {
    selectors.iter().find(|s| s.name.starts_with(word) && word.starts_with(s.min)).map(|s| s.name)
}

fn unknown(what: &str, word: &str, known: &[Selector]) -> String {
    let names: Vec<&str> = known.iter().map(|s| s.name).collect();
    let candidates: Vec<&str> = names.iter().copied().filter(|n| n.starts_with(word)).collect();
    if !word.is_empty() && candidates.len() > 1 {
        return format!("ambiguous {what} `{word}`: it could be {}", candidates.join(" or "));
    }
    format!("unknown {what} `{word}` (expected one of {})", names.join(", "))
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::True => f.write_str("all"),
            Pattern::False => f.write_str("none"),
            Pattern::Simple(s) => f.write_str(s),
            Pattern::Compound { selector, matcher } => {
                let (name, arg) = match matcher {
                    Matcher::Equals(s) => ("equals", s.as_str()),
                    Matcher::Contains(s) => ("contains", s.as_str()),
                    Matcher::StartsWith(s) => ("starts_with", s.as_str()),
                    Matcher::EndsWith(s) => ("ends_with", s.as_str()),
                    Matcher::Matches(re) => ("matches", re.as_str()),
                    Matcher::Globs(g) => ("globs", g.glob().glob()),
                };
                write!(f, "{selector}.{name}({arg})")
            }
            Pattern::Not(p) => write!(f, "!({p})"),
            Pattern::And(a, b) => write!(f, "({a} & {b})"),
            Pattern::Or(a, b) => write!(f, "({a} | {b})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A language like cargo's, to test with.
    const CARGO: Language = Language {
        simple: &[
            Selector { name: "library", min: "l" },
            Selector { name: "binary", min: "bi" },
            Selector { name: "benchmark", min: "be" },
            Selector { name: "example", min: "e" },
            Selector { name: "test", min: "te" },
        ],
        compound: &[
            Selector { name: "name", min: "n" },
            Selector { name: "package", min: "p" },
            Selector { name: "binary", min: "bi" },
            Selector { name: "benchmark", min: "be" },
            Selector { name: "example", min: "e" },
            Selector { name: "test", min: "te" },
        ],
    };

    /// A test case; `None` fields are not known yet.
    struct Case {
        package: &'static str,
        kind: Option<&'static str>,
        target: Option<&'static str>,
        name: Option<&'static str>,
    }

    impl Subject for Case {
        fn is(&self, selector: &str) -> Option<bool> {
            self.kind.map(|k| k == selector)
        }
        fn value(&self, selector: &str) -> Option<Option<&str>> {
            match selector {
                "package" => Some(Some(self.package)),
                "name" => self.name.map(Some),
                kind => self.kind.map(|k| if k == kind { self.target } else { None }),
            }
        }
    }

    const CASE: Case = Case {
        package: "foo",
        kind: Some("test"),
        target: Some("integration"),
        name: Some("tests::it_works"),
    };

    fn eval(text: &str, case: &Case) -> Option<bool> {
        parse(text, &CARGO).unwrap_or_else(|e| panic!("{text}: {e}")).eval(case)
    }

    #[test]
    fn every_operator_spelling_and_precedence() {
        for (text, expected) in [
            ("all", true),
            ("any()", true),
            ("true", true),
            ("none", false),
            ("false()", false),
            ("al", true),
            ("!none", true),
            ("~ all", false),
            ("not none", true),
            ("not(all)", false),
            ("all & none", false),
            ("all && all", true),
            ("all and all", true),
            ("all + none", false),
            ("all | none", true),
            ("none || none", false),
            ("none or all", true),
            ("all - none", true),
            ("all \\ all", false),
            ("all minus all", false),
            // & binds tighter than |
            ("all | none & none", true),
            ("(all | none) & none", false),
            ("!all | all", true),
            ("test & p.eq(foo)", true),
            ("test - te.eq(integration)", false),
        ] {
            assert_eq!(eval(text, &CASE), Some(expected), "{text}");
        }
    }

    #[test]
    fn matchers_delimiters_and_abbreviations() {
        for (text, expected) in [
            ("name.equals(tests::it_works)", true),
            ("n.eq[tests::it_works]", true),
            ("n.c{it_w}", true),
            ("n.s<tests>", true),
            ("n.en/works/", true),
            ("n.m(^tests::.*works$)", true),
            ("n.m(^works)", false),
            ("n.g(tests::*)", true),
            ("n.c((it))", false),
            ("n.c((it)_works)", false),
            ("name.contains((balanced))", false),
            ("package.equals(foo)", true),
            ("p.eq(bar)", false),
            ("test.equals(integration)", true),
            ("te.eq(integration)", true),
            ("binary.equals(integration)", false),
            ("binary", false),
            ("bi", false),
            ("test", true),
            ("l", false),
        ] {
            assert_eq!(eval(text, &CASE), Some(expected), "{text}");
        }
        let nested = parse("n.c((a(b)c))", &CARGO).unwrap();
        assert!(
            matches!(nested, Pattern::Compound { matcher: Matcher::Contains(ref s), .. } if s == "(a(b)c)")
        );
    }

    #[test]
    fn unknowns_propagate_three_ways() {
        let package_only = Case { package: "foo", kind: None, target: None, name: None };
        assert_eq!(eval("p.eq(foo) & n.eq(x)", &package_only), None);
        assert_eq!(eval("p.eq(bar) & n.eq(x)", &package_only), Some(false), "enough to skip the package");
        assert_eq!(eval("p.eq(foo) | n.eq(x)", &package_only), Some(true));
        assert_eq!(eval("!test", &package_only), None);
        let selection = Selection::new(&["p.eq(foo)".into()], &["n.c(slow)".into()], &CARGO).unwrap();
        assert_eq!(selection.eval(&package_only), None);
        assert_eq!(selection.eval(&CASE), Some(true));
        let selection = Selection::new(&[], &["package.equals(foo)".into()], &CARGO).unwrap();
        assert_eq!(selection.eval(&package_only), Some(false), "excludes win");
    }

    #[test]
    fn errors_point_at_the_column() {
        for (text, column, says) in [
            ("nmae.eq(x)", 1, "unknown compound selector `nmae`"),
            ("all &", 6, "expected a selector"),
            ("n.eq(x", 5, "never closed"),
            ("n.xx(y)", 3, "unknown matcher `xx`"),
            ("n.e(y)", 3, "ambiguous matcher `e`: it could be equals or ends_with"),
            ("b", 1, "ambiguous selector `b`: it could be binary or benchmark"),
            ("(all", 5, "expected `)`"),
            ("all all", 5, "unexpected `a`"),
            ("n.m([)", 5, "bad regex: unclosed character class"),
            ("n.eq x", 5, "expected the argument"),
            ("allor none", 1, "unknown selector `allor`"),
        ] {
            let error = parse(text, &CARGO).unwrap_err();
            assert!(error.message.contains(says), "{text}: {error}");
            assert_eq!(error.column, column, "{text}: {error}");
        }
    }
}
