//! Erlang term syntax, parsed and printed as the Erlang shell does.
//!
//! [`parse`] reads one term written in Erlang syntax, such as the text a user types at
//! the lib_chan client's prompt: `{store, joe, "writing a book"}.` It accepts what the
//! Erlang shell accepts for a literal term: atoms (bare or `'quoted'`), integers (`-5`,
//! `16#FF`, `1_000`, `$a`), floats (`-2.0e-3`), strings (`"text"`, charlists, adjacent
//! literals concatenate), sigil strings (`~"text"` is a UTF-8 binary, `~s"text"` a
//! charlist), binaries (`<<1,2,3>>`, `<<"bytes">>`, `<<"é"/utf8>>`), proper lists,
//! tuples and maps. Tokens come from the `erl_tokenize` crate, which follows `erl_scan`,
//! so escapes, based integers and digit separators mean what they mean in Erlang.
//!
//! The [`Display`](fmt::Display) impl of [`Term`] prints like Erlang's
//! `io_lib:format("~0tp", [T])` with the default `+pc latin1` printable range: one line,
//! no spaces after commas, `#{k => v}` maps, atoms quoted only when needed, lists of
//! printable Latin-1 characters as `"strings"`, printable binaries as `<<"text">>` (or
//! `<<"text"/utf8>>` when they hold non-ASCII UTF-8), and floats with the shortest
//! digits that read back exactly. `parse(&t.to_string())` gives back `t` for every term.

use std::fmt;

use erl_tokenize::{Keyword, Position, Symbol, Token, TokenKind, TokenValue};

use crate::etf::MAX_DEPTH;
use crate::term::{Atom, Term};

/// Why a text could not be read as a term, and where.
///
/// Displays as `line:column: problem`, e.g. `1:7: expected ',' or '}' but found ']'`.
/// Lines and columns count from 1; columns count characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct TextError {
    line: usize,
    column: usize,
    offset: usize,
    message: String,
}

impl TextError {
    fn new(src: &str, offset: usize, message: impl Into<String>) -> TextError {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        TextError {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            offset,
            message: message.into(),
        }
    }

    /// The line of the problem, from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column of the problem in characters, from 1.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The byte offset of the problem in the input.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What was wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Parses exactly one Erlang term from `input`.
///
/// Whitespace and `%` comments may surround the term, and one `.` (the Erlang shell's
/// terminator) may follow it; anything else is an error. Variables, expressions,
/// records, improper lists, integers beyond 64 bits and terms nested deeper than
/// [`MAX_DEPTH`] levels are rejected with the position of the offending token.
///
/// ```
/// use lib_chan_protocol::{parse, term};
/// assert_eq!(parse(r#"{store, joe, "writing a book"}."#).unwrap(), term!({store, joe, "writing a book"}));
/// assert_eq!(parse("{a,b]").unwrap_err().to_string(), "1:5: expected ',' or '}' but found ']'");
/// ```
pub fn parse(input: &str) -> Result<Term, TextError> {
    let mut p = Parser {
        src: input,
        pos: Position::new(),
        peeked: None,
    };
    let term = p.term(0)?;
    let mut next = p.next()?;
    if let Some(tok) = next {
        if tok.kind() == TokenKind::Symbol(Symbol::Dot) {
            next = p.next()?;
            if let Some(tok) = next {
                return Err(p.error_at(
                    tok,
                    format!(
                        "expected end of input after '.' but found {}",
                        p.describe(next)
                    ),
                ));
            }
        } else {
            return Err(p.error_at(
                tok,
                format!(
                    "expected end of input after the term but found {}",
                    p.describe(next)
                ),
            ));
        }
    }
    Ok(term)
}

/// A recursive-descent parser over the lexical tokens of `src`.
struct Parser<'a> {
    src: &'a str,
    /// Where the tokenizer resumes.
    pos: Position,
    /// The next lexical token when already scanned (`Some(None)` is the end).
    peeked: Option<Option<Token>>,
}

impl<'a> Parser<'a> {
    /// Scans the next lexical token, skipping whitespace and comments.
    fn scan(&mut self) -> Result<Option<Token>, TextError> {
        loop {
            match erl_tokenize::scan_token(self.src, self.pos) {
                Ok(Some(tok)) => {
                    self.pos = tok.end();
                    if tok.kind().is_lexical() {
                        return Ok(Some(tok));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(TextError::new(
                        self.src,
                        e.position.offset(),
                        e.kind.message(),
                    ))
                }
            }
        }
    }

    fn peek(&mut self) -> Result<Option<Token>, TextError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.scan()?);
        }
        Ok(self.peeked.flatten())
    }

    fn next(&mut self) -> Result<Option<Token>, TextError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.scan(),
        }
    }

    /// Consumes the next token when it is the symbol `s`.
    fn eat(&mut self, s: Symbol) -> Result<bool, TextError> {
        let hit = self
            .peek()?
            .is_some_and(|t| t.kind() == TokenKind::Symbol(s));
        if hit {
            self.peeked = None;
        }
        Ok(hit)
    }

    fn offset_of(&self, tok: Option<Token>) -> usize {
        tok.map_or(self.src.len(), |t| t.start().offset())
    }

    fn error_at(&self, tok: Token, message: impl Into<String>) -> TextError {
        TextError::new(self.src, tok.start().offset(), message)
    }

    fn error_opt(&self, tok: Option<Token>, message: impl Into<String>) -> TextError {
        TextError::new(self.src, self.offset_of(tok), message)
    }

    /// Says what a token is, for error messages.
    fn describe(&self, tok: Option<Token>) -> String {
        let Some(tok) = tok else {
            return "end of input".to_string();
        };
        let text = tok.text(self.src);
        let short = if text.chars().count() > 24 {
            let cut: String = text.chars().take(20).collect();
            format!("{cut}...")
        } else {
            text.to_string()
        };
        match tok.kind() {
            TokenKind::Symbol(_) => format!("'{short}'"),
            TokenKind::Keyword(_) => format!("reserved word '{short}'"),
            TokenKind::Atom => format!("atom {short}"),
            TokenKind::Integer | TokenKind::Float => format!("number {short}"),
            TokenKind::Char => format!("character {short}"),
            TokenKind::String | TokenKind::SigilString => format!("string {short}"),
            TokenKind::Variable => format!("variable {short}"),
            TokenKind::Comment | TokenKind::Whitespace => "white space".to_string(),
        }
    }

    /// Consumes the next token, which must be one of `expected` (symbols).
    fn expect_one_of(&mut self, expected: &[Symbol]) -> Result<Symbol, TextError> {
        let tok = self.next()?;
        if let Some(TokenKind::Symbol(s)) = tok.map(|t| t.kind()) {
            if expected.contains(&s) {
                return Ok(s);
            }
        }
        let names: Vec<String> = expected.iter().map(|s| format!("'{s}'")).collect();
        let what = match names.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
            [] => "nothing".to_string(),
        };
        Err(self.error_opt(
            tok,
            format!("expected {what} but found {}", self.describe(tok)),
        ))
    }

    /// Parses one term at nesting level `depth` (the top level is 0).
    fn term(&mut self, depth: usize) -> Result<Term, TextError> {
        let tok = self.next()?;
        let Some(tok) = tok else {
            return Err(self.error_opt(None, "expected a term but found end of input"));
        };
        if depth >= MAX_DEPTH {
            return Err(self.error_at(tok, format!("term nested deeper than {MAX_DEPTH} levels")));
        }
        match tok.kind() {
            TokenKind::Integer | TokenKind::Float | TokenKind::Char => self.number(tok, false),
            TokenKind::Symbol(s @ (Symbol::Hyphen | Symbol::Plus)) => {
                let num = self.next()?;
                match num {
                    Some(n)
                        if matches!(
                            n.kind(),
                            TokenKind::Integer | TokenKind::Float | TokenKind::Char
                        ) =>
                    {
                        self.number(n, s == Symbol::Hyphen)
                    }
                    _ => Err(self.error_opt(
                        num,
                        format!(
                            "expected a number after '{s}' but found {}",
                            self.describe(num)
                        ),
                    )),
                }
            }
            TokenKind::Atom => {
                let TokenValue::Atom(name) = tok.value(self.src) else {
                    unreachable!("an atom token has an atom value")
                };
                self.atom(tok, &name)
            }
            // Reserved only since OTP 27; older releases read them as atoms.
            TokenKind::Keyword(k @ (Keyword::Maybe | Keyword::Else)) => self.atom(tok, k.as_str()),
            TokenKind::Keyword(k) => Err(self.error_at(
                tok,
                format!("'{k}' is a reserved word; quote it ('{k}') to write the atom"),
            )),
            TokenKind::String => {
                let s = self.strings(tok)?;
                Ok(Term::string(&s))
            }
            TokenKind::SigilString => self.sigil(tok),
            TokenKind::Variable => Err(self.error_at(
                tok,
                format!("variables are not terms: {}", tok.text(self.src)),
            )),
            TokenKind::Symbol(Symbol::OpenSquare) => self.list(depth),
            TokenKind::Symbol(Symbol::OpenBrace) => self.tuple(depth),
            TokenKind::Symbol(Symbol::Sharp) => {
                let open = self.next()?;
                if open.is_some_and(|t| t.kind() == TokenKind::Symbol(Symbol::OpenBrace)) {
                    self.map(depth)
                } else {
                    Err(self.error_opt(
                        open,
                        format!(
                            "expected '{{' after '#' (records are not terms) but found {}",
                            self.describe(open)
                        ),
                    ))
                }
            }
            TokenKind::Symbol(Symbol::DoubleLeftAngle) => self.binary(),
            _ => Err(self.error_at(
                tok,
                format!("expected a term but found {}", self.describe(Some(tok))),
            )),
        }
    }

    /// An integer, float or character token, negated when `negative`.
    fn number(&self, tok: Token, negative: bool) -> Result<Term, TextError> {
        let out_of_range = || {
            self.error_at(
                tok,
                format!(
                    "integer {}{} does not fit in 64 bits",
                    if negative { "-" } else { "" },
                    tok.text(self.src)
                ),
            )
        };
        match tok.value(self.src) {
            TokenValue::Integer(v) => {
                let v = i128::from(v.ok_or_else(out_of_range)?);
                let v = if negative { -v } else { v };
                i64::try_from(v).map(Term::Int).map_err(|_| out_of_range())
            }
            TokenValue::Float(f) => Ok(Term::Float(if negative { -f } else { f })),
            TokenValue::Char(c) => {
                let c = i64::from(u32::from(c));
                Ok(Term::Int(if negative { -c } else { c }))
            }
            _ => unreachable!("number() is only called on number tokens"),
        }
    }

    fn atom(&self, tok: Token, name: &str) -> Result<Term, TextError> {
        match Atom::new(name) {
            Some(a) => Ok(Term::Atom(a)),
            None => Err(self.error_at(
                tok,
                format!("atom longer than {} characters", Atom::MAX_CHARS),
            )),
        }
    }

    /// The text of the string token `first` and of the string tokens right after it.
    fn strings(&mut self, first: Token) -> Result<String, TextError> {
        let mut text = String::new();
        let mut tok = first;
        loop {
            if let TokenValue::String(s) = tok.value(self.src) {
                text.push_str(&s);
            }
            match self.peek()? {
                Some(t) if t.kind() == TokenKind::String => {
                    self.peeked = None;
                    tok = t;
                }
                _ => return Ok(text),
            }
        }
    }

    /// `~"text"`, `~b"text"`, `~B"text"` (binaries) and `~s"text"`, `~S"text"`
    /// (charlists), as in OTP 27.
    fn sigil(&self, tok: Token) -> Result<Term, TextError> {
        let TokenValue::SigilString {
            prefix,
            content,
            suffix,
        } = tok.value(self.src)
        else {
            unreachable!("a sigil token has a sigil value")
        };
        if !suffix.is_empty() {
            return Err(self.error_at(tok, format!("unsupported sigil suffix '{suffix}'")));
        }
        match prefix {
            "" | "b" | "B" => Ok(Term::binary(content.as_bytes())),
            "s" | "S" => Ok(Term::string(&content)),
            _ => Err(self.error_at(tok, format!("unsupported sigil '~{prefix}'"))),
        }
    }

    /// The rest of a list after `[`.
    fn list(&mut self, depth: usize) -> Result<Term, TextError> {
        let mut items = Vec::new();
        if self.eat(Symbol::CloseSquare)? {
            return Ok(Term::List(items.into()));
        }
        loop {
            items.push(self.term(depth + 1)?);
            let sep =
                self.expect_one_of(&[Symbol::Comma, Symbol::VerticalBar, Symbol::CloseSquare])?;
            match sep {
                Symbol::Comma => continue,
                Symbol::VerticalBar => {
                    let at = self.peek()?;
                    match self.term(depth + 1)? {
                        Term::List(tail) => items.extend(tail.iter().cloned()),
                        other => {
                            return Err(self.error_opt(
                                at,
                                format!(
                                    "improper lists cannot be represented: the tail after '|' \
                                     must be a list, not {other}"
                                ),
                            ))
                        }
                    }
                    self.expect_one_of(&[Symbol::CloseSquare])?;
                    return Ok(Term::List(items.into()));
                }
                _ => return Ok(Term::List(items.into())),
            }
        }
    }

    /// The rest of a tuple after `{`.
    fn tuple(&mut self, depth: usize) -> Result<Term, TextError> {
        let mut items = Vec::new();
        if self.eat(Symbol::CloseBrace)? {
            return Ok(Term::Tuple(items.into()));
        }
        loop {
            items.push(self.term(depth + 1)?);
            if self.expect_one_of(&[Symbol::Comma, Symbol::CloseBrace])? == Symbol::CloseBrace {
                return Ok(Term::Tuple(items.into()));
            }
        }
    }

    /// The rest of a map after `#{`.
    fn map(&mut self, depth: usize) -> Result<Term, TextError> {
        let mut entries = Vec::new();
        if self.eat(Symbol::CloseBrace)? {
            return Ok(Term::map(entries));
        }
        loop {
            let key = self.term(depth + 1)?;
            let arrow = self.next()?;
            match arrow.map(|t| t.kind()) {
                Some(TokenKind::Symbol(Symbol::DoubleRightArrow)) => {}
                Some(TokenKind::Symbol(Symbol::MapMatch)) => {
                    return Err(self.error_opt(
                        arrow,
                        "':=' only updates an existing map; use '=>' to build one",
                    ))
                }
                _ => {
                    return Err(self.error_opt(
                        arrow,
                        format!("expected '=>' but found {}", self.describe(arrow)),
                    ))
                }
            }
            let value = self.term(depth + 1)?;
            entries.push((key, value));
            if self.expect_one_of(&[Symbol::Comma, Symbol::CloseBrace])? == Symbol::CloseBrace {
                return Ok(Term::map(entries));
            }
        }
    }

    /// The rest of a binary after `<<`.
    fn binary(&mut self) -> Result<Term, TextError> {
        let mut bytes = Vec::new();
        if self.eat(Symbol::DoubleRightAngle)? {
            return Ok(Term::binary(bytes));
        }
        loop {
            self.segment(&mut bytes)?;
            if self.expect_one_of(&[Symbol::Comma, Symbol::DoubleRightAngle])?
                == Symbol::DoubleRightAngle
            {
                return Ok(Term::binary(bytes));
            }
        }
    }

    /// One binary segment: an integer or a string, optionally `/utf8`.
    fn segment(&mut self, bytes: &mut Vec<u8>) -> Result<(), TextError> {
        enum Value {
            Int(i64),
            Text(String),
        }
        let tok = self.next()?;
        let Some(start) = tok else {
            return Err(self.error_opt(
                None,
                "expected an integer or a string in the binary but found end of input",
            ));
        };
        let value = match start.kind() {
            TokenKind::String => Value::Text(self.strings(start)?),
            TokenKind::Integer | TokenKind::Char => match self.number(start, false)? {
                Term::Int(i) => Value::Int(i),
                _ => unreachable!("integer and character tokens are integers"),
            },
            TokenKind::Symbol(Symbol::Hyphen) => {
                let n = self.next()?;
                match n.map(|t| (t, t.kind())) {
                    Some((t, TokenKind::Integer | TokenKind::Char)) => {
                        match self.number(t, true)? {
                            Term::Int(i) => Value::Int(i),
                            _ => unreachable!("integer and character tokens are integers"),
                        }
                    }
                    _ => {
                        return Err(self.error_opt(
                            n,
                            format!(
                                "expected an integer after '-' but found {}",
                                self.describe(n)
                            ),
                        ))
                    }
                }
            }
            _ => {
                return Err(self.error_at(
                    start,
                    format!(
                        "expected an integer or a string in the binary but found {}",
                        self.describe(tok)
                    ),
                ))
            }
        };
        if let Some(colon) = self.peek()? {
            if colon.kind() == TokenKind::Symbol(Symbol::Colon) {
                return Err(self.error_at(colon, "binary segment sizes are not supported"));
            }
        }
        let utf8 = if self.eat(Symbol::Slash)? {
            let spec = self.next()?;
            match spec.map(|t| (t, t.value(self.src))) {
                Some((_, TokenValue::Atom(a))) if a == "utf8" => true,
                _ => {
                    return Err(self.error_opt(
                        spec,
                        format!(
                            "unsupported binary type specifier {} (only /utf8 is supported)",
                            self.describe(spec)
                        ),
                    ))
                }
            }
        } else {
            false
        };
        match value {
            Value::Text(s) if utf8 => bytes.extend_from_slice(s.as_bytes()),
            Value::Text(s) => {
                for c in s.chars() {
                    let b = u8::try_from(u32::from(c)).map_err(|_| {
                        self.error_at(
                            start,
                            format!(
                                "character {c:?} (U+{:04X}) does not fit in a byte; \
                                 write the string as \"...\"/utf8",
                                u32::from(c)
                            ),
                        )
                    })?;
                    bytes.push(b);
                }
            }
            Value::Int(i) if utf8 => {
                let c = u32::try_from(i)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| {
                        self.error_at(start, format!("{i} is not a Unicode code point"))
                    })?;
                bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            Value::Int(i) => {
                let b = u8::try_from(i).map_err(|_| {
                    self.error_at(start, format!("{i} does not fit in a byte (0..255)"))
                })?;
                bytes.push(b);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------

/// Writes `name` as an Erlang atom, quoted when it has to be (`'Hello'`, `'end'`, `''`).
pub(crate) fn write_atom(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    write_atom_to(f, name)
}

fn write_atom_to<W: fmt::Write + ?Sized>(out: &mut W, name: &str) -> fmt::Result {
    if atom_needs_quotes(name) {
        out.write_char('\'')?;
        write_escaped(out, name.chars(), '\'')?;
        out.write_char('\'')
    } else {
        out.write_str(name)
    }
}

/// Erlang's `io_lib:quote_atom/2`: a bare atom starts with a lowercase Latin-1 letter,
/// goes on with letters, digits, `_` and `@`, and is not a reserved word.
fn atom_needs_quotes(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(head) = chars.next() else {
        return true;
    };
    let lower = |c: char| matches!(c, 'a'..='z' | 'ß'..='ö' | 'ø'..='ÿ');
    let name_char = |c: char| {
        lower(c) || matches!(c, 'A'..='Z' | 'À'..='Ö' | 'Ø'..='Þ' | '0'..='9' | '_' | '@')
    };
    !lower(head) || !chars.all(name_char) || Keyword::from_text(name).is_some()
}

/// Erlang's `io_lib:printable_latin1_list/1` test for one character.
fn is_printable_latin1(c: u32) -> bool {
    matches!(c, 32..=126 | 160..=255 | 8..=13 | 27)
}

/// Writes characters inside `quote` quotes as `io_lib:write_string/2` does for Unicode
/// output: printable characters as they are, the usual escapes, octal for the rest.
fn write_escaped<W: fmt::Write + ?Sized>(
    out: &mut W,
    chars: impl Iterator<Item = char>,
    quote: char,
) -> fmt::Result {
    for c in chars {
        match c {
            _ if c == quote => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            '\\' => out.write_str("\\\\")?,
            ' '..='~' | '\u{a0}'.. => out.write_char(c)?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\u{b}' => out.write_str("\\v")?,
            '\u{8}' => out.write_str("\\b")?,
            '\u{c}' => out.write_str("\\f")?,
            '\u{1b}' => out.write_str("\\e")?,
            '\u{7f}' => out.write_str("\\d")?,
            _ => write!(out, "\\{:03o}", u32::from(c))?,
        }
    }
    Ok(())
}

/// Writes a float as Erlang does (`io_lib_format:fwrite_g/1`): the shortest digits
/// that read back to the same float, placed either plainly (`100.0`, `0.001`) or in
/// scientific notation (`1.0e3`, `1.5e-5`), whichever is shorter, plain on a tie; but
/// a float of magnitude 2^53 or more (where floats stop being exact integers) always
/// in scientific notation. Either form has at least one digit on each side of the
/// point.
fn write_float<W: fmt::Write + ?Sized>(out: &mut W, f: f64) -> fmt::Result {
    const TWO_53: f64 = 9_007_199_254_740_992.0;
    if !f.is_finite() {
        // Not a term (the constructors and the decoder never make one), but printing
        // must not fail: say what it is, in a form `parse` rejects.
        return out.write_str(if f.is_nan() {
            "<<nan>>"
        } else if f > 0.0 {
            "<<inf>>"
        } else {
            "<<-inf>>"
        });
    }
    if f.is_sign_negative() {
        out.write_char('-')?;
    }
    let f = f.abs();
    if f == 0.0 {
        return out.write_str("0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. `1.2345e18` or `5e-324`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i64 = exp.parse().expect("{:e} has a decimal exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let len = digits.len() as i64;
    // The value is 0.digits * 10^(exp+1), or digits * 10^place.
    let place = exp - (len - 1);
    let plain = if place >= 0 && f >= TWO_53 {
        String::new()
    } else if place >= 0 {
        format!("{digits}{}.0", "0".repeat(place as usize))
    } else if exp >= 0 {
        let (int, frac) = digits.split_at(exp as usize + 1);
        // The point falls inside the digits: this is always the shorter form.
        return write!(out, "{int}.{frac}");
    } else {
        format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
    };
    let (first, rest) = digits.split_at(1);
    let scientific = format!("{first}.{}e{exp}", if rest.is_empty() { "0" } else { rest });
    if !plain.is_empty() && plain.len() <= scientific.len() {
        out.write_str(&plain)
    } else {
        out.write_str(&scientific)
    }
}

/// Writes a binary as `~tp` does: `<<"text">>` when every byte is a printable Latin-1
/// character, `<<"text"/utf8>>` when it is UTF-8 whose characters all are (and some
/// take more than a byte), else `<<1,2,3>>`.
fn write_binary<W: fmt::Write + ?Sized>(out: &mut W, bytes: &[u8]) -> fmt::Result {
    if bytes.is_empty() {
        return out.write_str("<<>>");
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| is_printable_latin1(c.into())) => {
            out.write_str("<<\"")?;
            write_escaped(out, s.chars(), '"')?;
            out.write_str(if s.is_ascii() { "\">>" } else { "\"/utf8>>" })
        }
        // Valid UTF-8 with an unprintable character prints as bytes, as in Erlang.
        Ok(_) => write_bytes(out, bytes),
        Err(_) if bytes.iter().all(|&b| is_printable_latin1(b.into())) => {
            out.write_str("<<\"")?;
            write_escaped(out, bytes.iter().map(|&b| char::from(b)), '"')?;
            out.write_str("\">>")
        }
        Err(_) => write_bytes(out, bytes),
    }
}

fn write_bytes<W: fmt::Write + ?Sized>(out: &mut W, bytes: &[u8]) -> fmt::Result {
    out.write_str("<<")?;
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{b}")?;
    }
    out.write_str(">>")
}

/// The printable characters of a charlist, or `None` when it is not one
/// (`io_lib:printable_list/1` with the Latin-1 range).
fn printable_chars(items: &[Term]) -> Option<impl Iterator<Item = char> + '_> {
    let printable = !items.is_empty()
        && items
            .iter()
            .all(|t| matches!(t, Term::Int(i) if u32::try_from(*i).is_ok_and(is_printable_latin1)));
    printable.then(|| {
        items.iter().map(|t| match t {
            Term::Int(i) => char::from(*i as u8),
            _ => unreachable!("checked above"),
        })
    })
}

/// One piece of work for the printer.
enum Step<'t> {
    Term(&'t Term),
    Text(&'static str),
}

/// Prints a term without recursion, so that any depth is fine.
fn write_term<W: fmt::Write + ?Sized>(out: &mut W, term: &Term) -> fmt::Result {
    let mut stack = vec![Step::Term(term)];
    while let Some(step) = stack.pop() {
        let term = match step {
            Step::Text(s) => {
                out.write_str(s)?;
                continue;
            }
            Step::Term(t) => t,
        };
        match term {
            Term::Int(i) => write!(out, "{i}")?,
            Term::Float(f) => write_float(out, *f)?,
            Term::Atom(a) => write_atom_to(out, a.as_str())?,
            Term::Binary(b) => write_binary(out, b)?,
            Term::List(items) if items.is_empty() => out.write_str("[]")?,
            Term::List(items) => {
                if let Some(chars) = printable_chars(items) {
                    out.write_char('"')?;
                    write_escaped(out, chars, '"')?;
                    out.write_char('"')?;
                } else {
                    out.write_char('[')?;
                    push_items(&mut stack, items, "]");
                }
            }
            Term::Tuple(items) => {
                out.write_char('{')?;
                push_items(&mut stack, items, "}");
            }
            Term::Map(entries) => {
                out.write_str("#{")?;
                stack.push(Step::Text("}"));
                for (i, (k, v)) in entries.iter().enumerate().rev() {
                    stack.push(Step::Term(v));
                    stack.push(Step::Text(" => "));
                    stack.push(Step::Term(k));
                    if i > 0 {
                        stack.push(Step::Text(","));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Schedules `items` separated by commas, then `close`.
fn push_items<'t>(stack: &mut Vec<Step<'t>>, items: &'t [Term], close: &'static str) {
    stack.push(Step::Text(close));
    for (i, t) in items.iter().enumerate().rev() {
        stack.push(Step::Term(t));
        if i > 0 {
            stack.push(Step::Text(","));
        }
    }
}

/// Prints the term as Erlang's `io_lib:format("~0tp", [Term])` does: Erlang syntax on
/// one line, which [`parse`] reads back to the same term.
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_term(f, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::term;
    use proptest::prelude::*;

    fn atom(s: &str) -> Term {
        Term::atom(s)
    }

    fn int(i: i64) -> Term {
        Term::Int(i)
    }

    #[test]
    fn parses_the_shell_examples() {
        let cases: Vec<(&str, Term)> = vec![
            (
                r#"{store, joe, "writing a book"}."#,
                term!({store, joe, "writing a book"}),
            ),
            (r#"{ok,"writing a book"}"#, term!({ok, "writing a book"})),
            ("joe", atom("joe")),
            ("nameServer", atom("nameServer")),
            ("a@b", atom("a@b")),
            ("a_1@B", atom("a_1@B")),
            ("'Hello world'", atom("Hello world")),
            ("'héllo'", atom("héllo")),
            ("héllo", atom("héllo")),
            ("'日本'", atom("日本")),
            ("''", atom("")),
            ("'end'", atom("end")),
            ("maybe", atom("maybe")),
            (r"'it\'s'", atom("it's")),
            (r"'a\nb'", atom("a\nb")),
            ("42", int(42)),
            ("-5", int(-5)),
            ("- 5", int(-5)),
            ("+5", int(5)),
            ("16#FF", int(255)),
            ("16#ff", int(255)),
            ("2#101", int(5)),
            ("-16#10", int(-16)),
            ("1_000", int(1000)),
            ("$a", int(97)),
            ("$\\n", int(10)),
            ("$é", int(233)),
            ("-$a", int(-97)),
            ("9223372036854775807", int(i64::MAX)),
            ("-9223372036854775808", int(i64::MIN)),
            ("1.5", Term::Float(1.5)),
            ("-2.0e-3", Term::Float(-2.0e-3)),
            ("1.0e10", Term::Float(1.0e10)),
            ("-0.0", Term::Float(-0.0)),
            ("\"text\"", Term::string("text")),
            ("\"\"", Term::nil()),
            (r#""a\nb\"c\\""#, Term::string("a\nb\"c\\")),
            (
                r#""\x{41}\x42\101\s\e\d\^a""#,
                Term::string("ABA \u{1b}\u{7f}\u{1}"),
            ),
            (r#""ab" "cd""#, Term::string("abcd")),
            ("\"ab\"\n  \"cd\" % comment\n", Term::string("abcd")),
            ("\"héllo wörld\"", Term::string("héllo wörld")),
            ("<<\"bytes\">>", Term::binary(b"bytes")),
            ("<<\"é\">>", Term::binary([233])),
            ("<<\"é\"/utf8>>", Term::binary("é")),
            ("<<\"a\" \"b\">>", Term::binary(b"ab")),
            ("<<1,2,3>>", Term::binary([1, 2, 3])),
            ("<<>>", Term::binary(b"")),
            ("<< >>", Term::binary(b"")),
            ("<<1,\"ab\",$c>>", Term::binary(b"\x01abc")),
            ("<<$é/utf8, 255>>", Term::binary(b"\xc3\xa9\xff")),
            ("~\"bin\"", Term::binary(b"bin")),
            ("~\"é\"", Term::binary("é")),
            ("~s\"str\"", Term::string("str")),
            ("[1,2,3]", term!([1, 2, 3])),
            ("[]", Term::nil()),
            ("[ ]", Term::nil()),
            ("[a|[b]]", term!([a, b])),
            ("[a|[]]", term!([a])),
            ("[$a|\"bc\"]", Term::string("abc")),
            ("{a,b}", term!({ a, b })),
            ("{}", Term::tuple([])),
            ("#{}", Term::map([])),
            (
                "#{k => v, 1 => [x]}",
                Term::map([(atom("k"), atom("v")), (int(1), term!([x]))]),
            ),
            (
                "#{a => #{b => #{c => {}}}}",
                Term::map([(
                    atom("a"),
                    Term::map([(atom("b"), Term::map([(atom("c"), Term::tuple([]))]))]),
                )]),
            ),
            ("#{a => 1, a => 2}", Term::map([(atom("a"), int(2))])),
            ("  % leading comment\n {a} .  % trailing\n", term!({ a })),
            ("{a}.", term!({ a })),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "parsing {text:?}");
        }
    }

    #[test]
    fn prints_like_the_erlang_shell() {
        let cases: Vec<(Term, &str)> = vec![
            (
                term!({store, joe, "writing a book"}),
                r#"{store,joe,"writing a book"}"#,
            ),
            (term!({ok, "writing a book"}), r#"{ok,"writing a book"}"#),
            (term!([1, 2, 3]), "[1,2,3]"),
            (Term::nil(), "[]"),
            (Term::tuple([]), "{}"),
            (Term::map([]), "#{}"),
            (
                Term::map([(atom("b"), int(2)), (atom("a"), int(1))]),
                "#{a => 1,b => 2}",
            ),
            (
                Term::map([(atom("m"), Term::map([(int(1), Term::string("x"))]))]),
                r#"#{m => #{1 => "x"}}"#,
            ),
            (atom("joe"), "joe"),
            (atom("a@b"), "a@b"),
            (atom("Hello"), "'Hello'"),
            (atom("hello world"), "'hello world'"),
            (atom("[]"), "'[]'"),
            (atom(""), "''"),
            (atom("end"), "'end'"),
            (atom("and"), "'and'"),
            (atom("receive"), "'receive'"),
            (atom("after"), "'after'"),
            (atom("maybe"), "'maybe'"),
            (atom("_a"), "'_a'"),
            (atom("1a"), "'1a'"),
            (atom("a.b"), "'a.b'"),
            (atom("it's"), r"'it\'s'"),
            (atom("a\\b"), r"'a\\b'"),
            (atom("a\nb\u{7f}\u{1}\u{85}"), r"'a\nb\d\001\205'"),
            (atom("héllo"), "héllo"),
            (atom("ßa"), "ßa"),
            (atom("aÀ"), "aÀ"),
            (atom("a×"), "'a×'"),
            (atom("Ö"), "'Ö'"),
            (atom("日本"), "'日本'"),
            (int(-5), "-5"),
            (int(i64::MIN), "-9223372036854775808"),
            (Term::string("a\n\t\"\\'"), r#""a\n\t\"\\'""#),
            (Term::string("\u{1b}\u{b}\u{8}\u{c}\r"), r#""\e\v\b\f\r""#),
            (Term::string("é"), "\"é\""),
            (Term::list([int(1000), int(2)]), "[1000,2]"),
            (Term::list([int(127)]), "[127]"),
            (Term::list([int(0)]), "[0]"),
            (Term::list([int(-1)]), "[-1]"),
            (Term::list([int(97), atom("a")]), "[97,a]"),
            (Term::binary(b"abc"), r#"<<"abc">>"#),
            (Term::binary(b""), "<<>>"),
            (Term::binary([1, 2, 3]), "<<1,2,3>>"),
            (Term::binary(b"a\nb"), r#"<<"a\nb">>"#),
            (Term::binary(b"\x1b\x7f"), "<<27,127>>"),
            (Term::binary("é"), r#"<<"é"/utf8>>"#),
            (Term::binary("é\n"), r#"<<"é\n"/utf8>>"#),
            (Term::binary([233]), r#"<<"é">>"#),
            (Term::binary([b'a', 233, 195, 169]), r#"<<"aéÃ©">>"#),
            (Term::binary("日本"), "<<230,151,165,230,156,172>>"),
            (Term::binary([196, 160]), "<<196,160>>"),
            (Term::Float(1.0), "1.0"),
            (Term::Float(-0.0), "-0.0"),
            (Term::Float(0.0), "0.0"),
            (Term::Float(2.75), "2.75"),
            (Term::Float(0.1), "0.1"),
            (Term::Float(100.0), "100.0"),
            (Term::Float(1000.0), "1.0e3"),
            (Term::Float(12000.0), "1.2e4"),
            (Term::Float(1.0e10), "1.0e10"),
            (Term::Float(1.0e-5), "1.0e-5"),
            (Term::Float(0.001), "0.001"),
            (Term::Float(0.0001), "0.0001"),
            (Term::Float(0.00012), "1.2e-4"),
            (Term::Float(123456789012345.0), "123456789012345.0"),
            (Term::Float(1.2345e18), "1.2345e18"),
            (Term::Float(12345.678), "12345.678"),
            (Term::Float(5.0e-324), "5.0e-324"),
            (Term::Float(f64::MAX), "1.7976931348623157e308"),
        ];
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let text = Term::Float(f).to_string();
            assert!(parse(&text).is_err(), "{text} is not a term");
        }
        for (term, want) in cases {
            assert_eq!(term.to_string(), want);
            assert_eq!(parse(want), Ok(term), "parsing back {want:?}");
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("{a,b,c]".into(), "1:7", "expected ',' or '}' but found ']'"),
            (
                "[1,2".into(),
                "1:5",
                "expected ',', '|' or ']' but found end of input",
            ),
            ("".into(), "1:1", "expected a term but found end of input"),
            (
                "   ".into(),
                "1:4",
                "expected a term but found end of input",
            ),
            ("Foo".into(), "1:1", "variables are not terms: Foo"),
            ("{ok, _}".into(), "1:6", "variables are not terms: _"),
            (
                "[a|b]".into(),
                "1:4",
                "improper lists cannot be represented",
            ),
            ("<<256>>".into(), "1:3", "256 does not fit in a byte"),
            ("<<-1>>".into(), "1:3", "-1 does not fit in a byte"),
            (
                "<<1.5>>".into(),
                "1:3",
                "expected an integer or a string in the binary",
            ),
            ("<<\"ā\">>".into(), "1:3", "does not fit in a byte"),
            (
                "<<1:8>>".into(),
                "1:4",
                "binary segment sizes are not supported",
            ),
            (
                "<<1/binary>>".into(),
                "1:5",
                "unsupported binary type specifier atom binary",
            ),
            (
                "9223372036854775808".into(),
                "1:1",
                "does not fit in 64 bits",
            ),
            (
                "-9223372036854775809".into(),
                "1:2",
                "does not fit in 64 bits",
            ),
            (
                "99999999999999999999999".into(),
                "1:1",
                "does not fit in 64 bits",
            ),
            (
                "{a} b".into(),
                "1:5",
                "expected end of input after the term but found atom b",
            ),
            (
                "a. b".into(),
                "1:4",
                "expected end of input after '.' but found atom b",
            ),
            (
                "a..".into(),
                "1:2",
                "expected end of input after the term but found '..'",
            ),
            ("1 + 2".into(), "1:3", "found '+'"),
            ("f()".into(), "1:2", "found '('"),
            ("end".into(), "1:1", "'end' is a reserved word"),
            ("{a, receive}".into(), "1:5", "'receive' is a reserved word"),
            ("'abc".into(), "1:1", "no closing quotation"),
            ("\"abc".into(), "1:1", "no closing quotation"),
            (r#""\x{zz}""#.into(), "1:1", "escaped character"),
            (
                "#{a := 1}".into(),
                "1:5",
                "':=' only updates an existing map",
            ),
            ("#{a}".into(), "1:4", "expected '=>' but found '}'"),
            ("#rec{}".into(), "1:2", "records are not terms"),
            ("\n  {a,,b}".into(), "2:6", "expected a term but found ','"),
            ("[\n\"é\", ]".into(), "2:6", "expected a term but found ']'"),
            (
                "- a".into(),
                "1:3",
                "expected a number after '-' but found atom a",
            ),
            (
                format!("'{}'", "a".repeat(256)),
                "1:1",
                "atom longer than 255 characters",
            ),
            ("1.0e999".into(), "1:1", "float"),
            ("~r\"x\"".into(), "1:1", "unsupported sigil '~r'"),
            ("[a||b]".into(), "1:3", "found '||'"),
        ];
        for (text, at, what) in cases {
            let err = parse(&text).expect_err(&text);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("{at}: ")) && msg.contains(what),
                "parsing {text:?}: got {msg:?}, want {at}: ...{what}..."
            );
        }
        let err = parse("{a,\n b]").unwrap_err();
        assert_eq!((err.line(), err.column(), err.offset()), (2, 3, 6));
        assert_eq!(err.message(), "expected ',' or '}' but found ']'");
    }

    #[test]
    fn nesting_is_bounded() {
        for open in ["[", "{", "#{a => ", "[a|"] {
            let err = parse(&open.repeat(100_000)).unwrap_err();
            assert!(err.message().contains("nested deeper"), "{open}: {err}");
        }
        // Up to MAX_DEPTH levels are fine, and print back without recursion trouble.
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let t = parse(&deep).unwrap();
        assert_eq!(t.to_string(), deep);
        let deeper = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(&deeper).is_err());
        // Printing never recurses, however deep a term built in Rust is.
        let mut t = Term::nil();
        for _ in 0..200_000 {
            t = Term::tuple([t]);
        }
        assert_eq!(t.to_string().len(), 400_002);
        // Dropping such a term recurses in Arc's destructor; unwind it by hand.
        while let Term::Tuple(items) = t {
            t = items[0].clone();
        }
    }

    fn arb_atom() -> impl Strategy<Value = Term> {
        prop_oneof![
            "[a-z][a-zA-Z0-9_@]{0,12}",
            "[a-zß-ÿA-Z_ 0-9'\"\\\\.\\[\\]]{0,12}",
            prop::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter),
            prop::collection::vec(any::<char>(), 250..=255).prop_map(String::from_iter),
            prop::sample::select(vec![
                "end", "maybe", "else", "[]", "''", "true", "Ö", "日本"
            ])
            .prop_map(String::from),
        ]
        .prop_map(|s| Term::atom(&s))
    }

    fn arb_leaf() -> impl Strategy<Value = Term> {
        prop_oneof![
            any::<i64>().prop_map(Term::Int),
            (-1000i64..1000).prop_map(Term::Int),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Term::Float),
            prop::sample::select(vec![0.0, -0.0, 0.1, 1.0e15, 1.0e16, 1.0e-4, 1.0e-5, 100.0])
                .prop_map(Term::Float),
            arb_atom(),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Term::binary),
            "[ -~é\n]{0,16}".prop_map(|s| Term::binary(s.as_bytes())),
            "[ -~\u{a0}-ÿ]{0,16}"
                .prop_map(|s| Term::binary(s.chars().map(|c| c as u8).collect::<Vec<u8>>())),
            ".{0,16}".prop_map(|s| Term::string(&s)),
            "[ -~\u{a0}-ÿ\n\t]{1,16}".prop_map(|s| Term::string(&s)),
            prop::collection::vec(any::<char>(), 0..8)
                .prop_map(|v| Term::string(&String::from_iter(v))),
            prop::collection::vec(0i64..300, 0..8)
                .prop_map(|v| Term::list(v.into_iter().map(Term::Int))),
        ]
    }

    fn arb_term() -> impl Strategy<Value = Term> {
        arb_leaf().prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Term::list),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Term::tuple),
                prop::collection::vec((inner.clone(), inner), 0..6).prop_map(Term::map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn printing_then_parsing_gives_the_term_back(t in arb_term()) {
            let text = t.to_string();
            prop_assert!(!text.contains('\n'), "one line: {}", text);
            prop_assert_eq!(parse(&text), Ok(t.clone()), "text {}", text);
            prop_assert_eq!(parse(&format!(" {text} .\n")), Ok(t));
        }

        #[test]
        fn floats_print_with_the_shortest_round_trip_digits(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let text = Term::Float(f).to_string();
            let back: f64 = text.parse().unwrap();
            prop_assert_eq!(back.to_bits(), f.to_bits(), "{}", text);
            prop_assert!(text.contains('.'), "{}", text);
        }

        #[test]
        fn garbage_never_panics(s in "[\\[\\]{}#<>|,.=:/a-zA-Z0-9\"'$ \\\\-]{0,40}") {
            let _ = parse(&s);
        }
    }

    /// The terms compared with real Erlang's printer.
    fn erlang_table() -> Vec<Term> {
        vec![
            term!({store, joe, "writing a book"}),
            term!({ok, "writing a book"}),
            term!([1, 2, 3]),
            Term::nil(),
            Term::tuple([]),
            Term::map([]),
            Term::map([
                (atom("b"), Term::string("x")),
                (atom("a"), int(1)),
                (int(1), Term::tuple([])),
                (Term::binary(b"k"), Term::nil()),
            ]),
            Term::map([(
                atom("m"),
                Term::map([(Term::Float(1.5), Term::string("é"))]),
            )]),
            Term::list([
                atom("Hello"),
                atom("hello world"),
                atom("[]"),
                atom(""),
                atom("end"),
                atom("and"),
                atom("receive"),
                atom("cond"),
                atom("a@b"),
                atom("_x"),
                atom("a.b"),
            ]),
            Term::list([
                atom("it's"),
                atom("a\\b\"c"),
                atom("a\nb\u{7f}\u{1}\u{85}\u{a0}"),
            ]),
            Term::list([
                atom("héllo"),
                atom("ßa"),
                atom("aÀ"),
                atom("a×"),
                atom("Ö"),
                atom("日本"),
            ]),
            Term::list([int(-5), int(0), int(i64::MIN), int(i64::MAX)]),
            Term::string("a\n\t\"\\'\u{1b}\u{b}\u{8}\u{c}\r"),
            Term::string("héllo wörld ÿ\u{a0}"),
            Term::list([int(1000), int(2)]),
            Term::list([int(127)]),
            Term::list([int(0), int(97)]),
            Term::list([int(97), atom("a"), Term::string("b")]),
            Term::list([
                Term::binary(b"abc"),
                Term::binary(b""),
                Term::binary([1, 2, 3]),
                Term::binary(b"a\nb\"\\"),
                Term::binary(b"\x1b\x7f"),
            ]),
            Term::list([
                Term::binary("é"),
                Term::binary("é\n\u{a0}"),
                Term::binary([233]),
                Term::binary([b'a', 233, 195, 169]),
                Term::binary("日本"),
                Term::binary([196, 160]),
                Term::binary([194, 133]),
            ]),
            Term::list(
                [
                    1.0,
                    -0.0,
                    2.75,
                    0.1,
                    100.0,
                    1000.0,
                    12000.0,
                    1.0e10,
                    1.0e-5,
                    0.001,
                    0.0001,
                    0.00012,
                    1.0e15,
                    1.0e16,
                    123456789012345.0,
                    1234567890123456.0,
                    1.2345e18,
                    5.0e-324,
                    2.2250738585072014e-308,
                    f64::MAX,
                    -1.5e300,
                    9007199254740991.0,
                    9007199254740992.0,
                    9007199254740994.0,
                    -2.6603100281139016e18,
                    1.0e21,
                    1.0e22,
                    4.5e15,
                    4.5e16,
                ]
                .map(Term::Float),
            ),
            Term::tuple([Term::tuple([Term::tuple([Term::list([Term::map([(
                atom("a"),
                Term::nil(),
            )])])])])]),
            Term::tuple([Term::string("x"), Term::list([Term::string("")])]),
            Term::list([Term::string("[]"), Term::string("a'b")]),
            Term::tuple([
                atom("error"),
                Term::tuple([atom("badarg"), Term::binary(b"\0")]),
            ]),
        ]
    }

    /// Texts that both parsers read; the terms they give must print the same.
    const PARSE_TABLE: &[&str] = &[
        "16#FF",
        "2#101",
        "-16#1f",
        "36#Zz",
        "1_000_000",
        "$a",
        "$\\n",
        "$\\x{41}",
        "-$a",
        "\"a\\x{41}\\101\\s\\e\\d\\^a\"",
        "\"ab\" \"cd\"",
        "'it\\'s'",
        "'a\\x{e9}'",
        "<<\"é\"/utf8>>",
        "<<\"é\">>",
        "<<1,\"ab\",$c>>",
        "<<$é/utf8>>",
        "[a|[b]]",
        "[$a|\"bc\"]",
        "#{b => 1, a => 2, a => 3}",
        "-2.0e-3",
        "1.0e-10",
        "123.456e-10",
        "- 5",
        "{'hello world', héllo, 'end', 'ok'}",
    ];

    /// A simple deterministic generator of float bit patterns.
    fn sample_floats(n: usize) -> Vec<f64> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::new();
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                out.push(f);
            }
            // Also short decimal values of all magnitudes.
            let short = (x % 100_000) as f64 * 10f64.powi((x >> 40) as i32 % 40 - 20);
            out.push(short);
        }
        out
    }

    /// Compares our printer with `io_lib:format("~0tp", [T])` of the installed Erlang.
    #[test]
    fn printing_matches_real_erlang() {
        let mut texts: Vec<String> = erlang_table().iter().map(Term::to_string).collect();
        let ours_printed = texts.clone();
        let floats = sample_floats(2000);
        texts.extend(floats.iter().map(|f| Term::Float(*f).to_string()));
        texts.extend(PARSE_TABLE.iter().map(|s| s.to_string()));
        let input: String = texts.iter().map(|t| format!("{t}\n")).collect();
        let path =
            std::env::temp_dir().join(format!("lib_chan_text_test_{}.txt", std::process::id()));
        std::fs::write(&path, input).unwrap();
        let script = r#"
            [File] = init:get_plain_arguments(),
            {ok, Bin} = file:read_file(File),
            Lines = string:split(unicode:characters_to_list(Bin), "\n", all),
            io:setopts([{encoding, unicode}]),
            lists:foreach(fun("") -> ok;
                             (Line) ->
                try
                    {ok, Toks, _} = erl_scan:string(Line ++ "."),
                    {ok, Exprs} = erl_parse:parse_exprs(Toks),
                    {value, V, _} = erl_eval:exprs(Exprs, []),
                    io:format("~ts~n", [io_lib:format("~0tp", [V])])
                catch C:E -> io:format("ERROR ~p:~p~n", [C, E])
                end
            end, Lines),
            halt().
        "#;
        let output = std::process::Command::new("erl")
            .args(["-noshell", "-eval", script, "-extra"])
            .arg(&path)
            .output();
        let _ = std::fs::remove_file(&path);
        let output = match output {
            Ok(o) => o,
            Err(e) => panic!(
                "cannot run `erl` ({e}): this test needs Erlang; install the Debian package \
                 erlang-base (apt-get install erlang-base)"
            ),
        };
        assert!(output.status.success(), "erl failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let theirs: Vec<&str> = stdout.lines().collect();
        assert_eq!(theirs.len(), texts.len(), "erl output:\n{stdout}");
        let table_len = ours_printed.len();
        for (ours, erl) in ours_printed.iter().zip(&theirs) {
            assert_eq!(ours, erl, "our printing differs from Erlang's");
        }
        for ((f, ours), erl) in floats
            .iter()
            .zip(&texts[table_len..])
            .zip(&theirs[table_len..])
        {
            assert_eq!(ours, erl, "float {f:e} prints differently");
        }
        let parse_from = table_len + floats.len();
        for (text, erl) in PARSE_TABLE.iter().zip(&theirs[parse_from..]) {
            let ours = parse(text)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .to_string();
            assert_eq!(&ours, erl, "{text} parses differently");
        }
    }
}
