//! The condition language of `choice` steps: the `when:` expressions that integrators write in
//! route YAML, such as `registry.status == 404 && exists(body.urgent)`.
//!
//! [`Expr::parse`] turns the text into a syntax tree once, at config load, with precise errors
//! (a 0-based char offset and a message that says what was expected); [`Expr::eval`] and
//! [`Expr::eval_bool`] evaluate it against a JSON context whose top-level keys are the roots
//! (`body`, `headers`, `query`, `params` and step results by name); [`Expr::roots`] lists the
//! roots an expression reads so the config checker can report unknown ones.
//!
//! The language:
//!
//! - literals: `"text"` or `'text'` (escapes `\"` `\'` `\\` `\n` `\t`), `12`, `1.5`, `true`,
//!   `false`, `null`, lists `[a, b, c]`;
//! - paths: `root.field`, `root.list[0]`, `root["key with space"]`; a missing field or position
//!   is `null`, never an error;
//! - operators, lowest precedence first: `||`/`or`; `&&`/`and`; `!`/`not`; the comparisons
//!   `==` `!=` `<` `<=` `>` `>=` `in` `not in` (which do not chain); unary `-`; then literals,
//!   paths, calls and parentheses;
//! - `==`/`!=` compare JSON structurally, numbers numerically (`1 == 1.0`); ordering needs two
//!   numbers or two strings; `in` is membership in a list or a substring of a string;
//! - functions: `exists(path)`, `len(x)`, `contains(haystack, needle)`, `starts_with(s, prefix)`,
//!   `ends_with(s, suffix)`, `lower(s)`, `upper(s)`, `number(s)`, `string(x)`, and
//!   `xpath(data, "/path")`, the first match of an XPath-like path in XML read as data (a
//!   registry's SOAP answer: `xpath(person.body, "//Person/Status") == "active"`; element text
//!   as a string, null when nothing matches; see `tilts_adapters::xml::select`); a missing (`null`)
//!   argument is treated as absent: `len` gives 0, `contains`/`starts_with`/`ends_with` (and
//!   `in` with a null right side) give false, `lower`/`upper`/`number`/`string` give null;
//! - truthiness: `null`, `false`, `0`, `""`, `[]` and `{}` are false, everything else true.
//!
//! Evaluation errors name the operator or function and the JSON types involved, never the
//! values, which may be personal data. Conditions are limited to [`MAX_LEN`] chars and
//! [`MAX_DEPTH`] nested levels so that a hostile config cannot overflow the stack.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde_json::{Number, Value};

/// The longest condition accepted, in chars.
pub const MAX_LEN: usize = 4096;

/// The deepest nesting accepted: parentheses, lists, calls and unary operators each add a level.
pub const MAX_DEPTH: usize = 64;

/// The functions a condition can call, in the order error messages list them.
pub const FUNCTIONS: &[&str] = &[
    "exists",
    "len",
    "contains",
    "starts_with",
    "ends_with",
    "lower",
    "upper",
    "number",
    "string",
    "xpath",
];

/// A parse or evaluation error: where (a 0-based char offset into the source) and what.
///
/// Messages never contain values from the evaluation context.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// 0-based char (not byte) offset into the source where the problem is.
    pub offset: usize,
    /// What went wrong and, for parse errors, what was expected.
    pub message: String,
}

impl ExprError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        ExprError {
            offset,
            message: message.into(),
        }
    }
}

/// A parsed condition: its syntax tree and the source text it came from.
#[derive(Clone, PartialEq)]
pub struct Expr {
    src: String,
    root: Node,
}

impl Expr {
    /// Parses a condition, reporting the first problem with its char offset.
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        let len = src.chars().count();
        if len > MAX_LEN {
            return Err(ExprError::new(
                MAX_LEN,
                format!("condition is too long: {len} characters, at most {MAX_LEN} are allowed"),
            ));
        }
        let chars: Vec<char> = src.chars().collect();
        let toks = lex(&chars)?;
        let mut parser = Parser {
            chars: &chars,
            toks,
            pos: 0,
            depth: 0,
        };
        let root = parser.parse_condition()?;
        Ok(Expr {
            src: src.to_owned(),
            root,
        })
    }

    /// Evaluates against a JSON context object (its top-level keys are the roots: body, headers,
    /// query, params, and step results by name).
    pub fn eval(&self, ctx: &Value) -> Result<Value, ExprError> {
        eval_node(&self.root, ctx).map(Cow::into_owned)
    }

    /// Evaluates and returns the truthiness of the result: `null`, `false`, `0`, `""`, `[]` and
    /// `{}` are false, everything else true.
    pub fn eval_bool(&self, ctx: &Value) -> Result<bool, ExprError> {
        eval_node(&self.root, ctx).map(|v| truthy(&v))
    }

    /// Every root identifier the expression reads (e.g. `["registry", "body"]`), with its char
    /// offset: one entry per occurrence, in source order.
    pub fn roots(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        collect_roots(&self.root, &mut out);
        out.sort_by_key(|(_, offset)| *offset);
        out
    }

    /// The source text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.src
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.src).finish()
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.src)
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Box<Value>),
    List(Vec<Node>),
    Path(Box<Path>),
    Not(Box<Node>),
    Neg {
        inner: Box<Node>,
        offset: usize,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Cmp {
        op: CmpOp,
        offset: usize,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    Call {
        func: Func,
        offset: usize,
        args: Vec<Node>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Path {
    root: String,
    offset: usize,
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::In => "in",
            CmpOp::NotIn => "not in",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Exists,
    Len,
    Contains,
    StartsWith,
    EndsWith,
    Lower,
    Upper,
    Number,
    String,
    Xpath,
}

impl Func {
    fn lookup(name: &str) -> Option<Func> {
        Some(match name {
            "exists" => Func::Exists,
            "len" => Func::Len,
            "contains" => Func::Contains,
            "starts_with" => Func::StartsWith,
            "ends_with" => Func::EndsWith,
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "number" => Func::Number,
            "string" => Func::String,
            "xpath" => Func::Xpath,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Exists => "exists",
            Func::Len => "len",
            Func::Contains => "contains",
            Func::StartsWith => "starts_with",
            Func::EndsWith => "ends_with",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Number => "number",
            Func::String => "string",
            Func::Xpath => "xpath",
        }
    }

    fn signature(self) -> &'static str {
        match self {
            Func::Exists => "exists(path)",
            Func::Len => "len(x)",
            Func::Contains => "contains(haystack, needle)",
            Func::StartsWith => "starts_with(text, prefix)",
            Func::EndsWith => "ends_with(text, suffix)",
            Func::Lower => "lower(text)",
            Func::Upper => "upper(text)",
            Func::Number => "number(text)",
            Func::String => "string(x)",
            Func::Xpath => "xpath(xml_data, \"/path/to/element\")",
        }
    }

    fn arity(self) -> usize {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith | Func::Xpath => 2,
            _ => 1,
        }
    }
}

fn lit(v: Value) -> Node {
    Node::Lit(Box::new(v))
}

fn collect_roots(node: &Node, out: &mut Vec<(String, usize)>) {
    match node {
        Node::Lit(_) => {}
        Node::Path(p) => out.push((p.root.clone(), p.offset)),
        Node::Not(inner) | Node::Neg { inner, .. } => collect_roots(inner, out),
        Node::Cmp { lhs, rhs, .. } => {
            collect_roots(lhs, out);
            collect_roots(rhs, out);
        }
        Node::List(items) | Node::And(items) | Node::Or(items) | Node::Call { args: items, .. } => {
            for item in items {
                collect_roots(item, out);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(Number),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Bang,
    Minus,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Char offset of the first char.
    start: usize,
    /// Char offset just past the last char.
    end: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex(chars: &[char]) -> Result<Vec<Token>, ExprError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let next = chars.get(i + 1).copied();
        let after = chars.get(i + 2).copied();
        let err = |message: &str| Err(ExprError::new(start, message));
        let (tok, len) = match c {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '[' => (Tok::LBracket, 1),
            ']' => (Tok::RBracket, 1),
            ',' => (Tok::Comma, 1),
            '.' => (Tok::Dot, 1),
            '-' => (Tok::Minus, 1),
            '=' => match next {
                Some('=') if after == Some('=') => {
                    return err("'===' is not an operator; write '==' to compare");
                }
                Some('=') => (Tok::Eq, 2),
                Some('>') => return err("'=>' is not an operator; write '>=' for 'at least'"),
                Some('<') => return err("'=<' is not an operator; write '<=' for 'at most'"),
                _ => return err("'=' is not an operator; write '==' to compare"),
            },
            '!' => match next {
                Some('=') if after == Some('=') => {
                    return err("'!==' is not an operator; write '!=' for 'not equal'");
                }
                Some('=') => (Tok::Ne, 2),
                _ => (Tok::Bang, 1),
            },
            '<' => match next {
                Some('=') => (Tok::Le, 2),
                Some('>') => return err("'<>' is not an operator; write '!=' for 'not equal'"),
                _ => (Tok::Lt, 1),
            },
            '>' => match next {
                Some('=') => (Tok::Ge, 2),
                _ => (Tok::Gt, 1),
            },
            '&' => match next {
                Some('&') => (Tok::AndAnd, 2),
                _ => return err("'&' is not an operator; write '&&' (or 'and')"),
            },
            '|' => match next {
                Some('|') => (Tok::OrOr, 2),
                _ => return err("'|' is not an operator; write '||' (or 'or')"),
            },
            '"' | '\'' => lex_string(chars, start)?,
            c if c.is_ascii_digit() => lex_number(chars, start)?,
            c if is_ident_start(c) => {
                let mut j = i + 1;
                while j < chars.len() && is_ident_char(chars[j]) {
                    j += 1;
                }
                (Tok::Ident(chars[i..j].iter().collect()), j - i)
            }
            '$' => return err("unexpected character '$'; paths need no '$': write body.field"),
            '{' | '}' => {
                return err(&format!(
                    "unexpected character '{c}'; a condition is not a template: write paths \
                     such as body.field without braces"
                ));
            }
            '+' | '*' | '/' | '%' => {
                return err(&format!(
                    "unexpected character '{c}'; conditions have no arithmetic"
                ));
            }
            _ => return err(&format!("unexpected character '{}'", c.escape_debug())),
        };
        out.push(Token {
            tok,
            start,
            end: start + len,
        });
        i = start + len;
    }
    out.push(Token {
        tok: Tok::Eof,
        start: chars.len(),
        end: chars.len(),
    });
    Ok(out)
}

/// Lexes a quoted string starting at `start`; returns the token and its length in chars.
fn lex_string(chars: &[char], start: usize) -> Result<(Tok, usize), ExprError> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => {
                return Err(ExprError::new(
                    start,
                    format!("unclosed string; add the closing {quote}"),
                ));
            }
            Some(&c) if c == quote => return Ok((Tok::Str(text), i + 1 - start)),
            Some('\\') => {
                let escaped = match chars.get(i + 1) {
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some(other) => {
                        return Err(ExprError::new(
                            i,
                            format!(
                                "unknown escape '\\{}' in string; the escapes are \\\" \\' \\\\ \\n \\t",
                                other.escape_debug()
                            ),
                        ));
                    }
                    None => {
                        return Err(ExprError::new(
                            start,
                            format!("unclosed string; add the closing {quote}"),
                        ));
                    }
                };
                text.push(escaped);
                i += 2;
            }
            Some(&c) => {
                text.push(c);
                i += 1;
            }
        }
    }
}

/// Lexes an unsigned integer or decimal starting at `start`.
fn lex_number(chars: &[char], start: usize) -> Result<(Tok, usize), ExprError> {
    let digits_end = |mut i: usize| {
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits_end(start);
    let mut decimal = false;
    if chars.get(i) == Some(&'.') {
        if chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            decimal = true;
            i = digits_end(i + 1);
        } else {
            return Err(ExprError::new(
                i,
                "malformed number: expected digits after '.'",
            ));
        }
    }
    if chars.get(i).is_some_and(|&c| is_ident_char(c) || c == '.') {
        let mut j = i;
        while j < chars.len() && (is_ident_char(chars[j]) || chars[j] == '.') {
            j += 1;
        }
        let word: String = chars[start..j].iter().collect();
        let mut message = format!("malformed number '{}'", truncate(&word));
        if start > 0 && chars[start - 1] == '.' && !word.contains('.') {
            message.push_str(&format!(
                "; to read a key that starts with a digit, write [\"{}\"]",
                truncate(&word)
            ));
        }
        return Err(ExprError::new(start, message));
    }
    let text: String = chars[start..i].iter().collect();
    let number = if decimal {
        None
    } else if let Ok(n) = text.parse::<i64>() {
        Some(Number::from(n))
    } else if let Ok(n) = text.parse::<u64>() {
        Some(Number::from(n))
    } else {
        None
    };
    let number = match number {
        Some(n) => n,
        None => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .ok_or_else(|| ExprError::new(start, "number is too large"))?,
    };
    Ok((Tok::Num(number), i - start))
}

#[cold]
#[inline(never)]
fn unknown_function(name: &str, offset: usize) -> ExprError {
    ExprError::new(
        offset,
        format!(
            "unknown function '{}'; known functions: {}",
            truncate(name),
            FUNCTIONS.join(", ")
        ),
    )
}

#[cold]
#[inline(never)]
fn wrong_arity(func: Func, found: usize, offset: usize) -> ExprError {
    let plural = if func.arity() == 1 { "" } else { "s" };
    ExprError::new(
        offset,
        format!(
            "{} takes {} argument{plural}, found {found}: write {}",
            func.name(),
            func.arity(),
            func.signature()
        ),
    )
}

/// Shortens source text quoted in a message.
fn truncate(text: &str) -> String {
    const MAX: usize = 32;
    if text.chars().count() > MAX {
        let mut short: String = text.chars().take(MAX).collect();
        short.push('…');
        short
    } else {
        text.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------

struct Parser<'s> {
    chars: &'s [char],
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos]
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        let last = self.toks.len() - 1;
        &self.toks[(self.pos + ahead).min(last)]
    }

    /// Moves past the current token and returns its char offset.
    fn advance(&mut self) -> usize {
        let start = self.toks[self.pos].start;
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        start
    }

    fn prev(&self) -> Option<&Token> {
        self.pos.checked_sub(1).map(|i| &self.toks[i])
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == kw)
    }

    /// `'text'` of a token, or `end of condition`.
    fn describe(&self, tok: &Token) -> String {
        if tok.tok == Tok::Eof {
            return "end of condition".to_owned();
        }
        let text: String = self.chars[tok.start..tok.end].iter().collect();
        match tok.tok {
            // A string literal shows with its own quotes.
            Tok::Str(_) => truncate(&text),
            _ => format!("'{}'", truncate(&text)),
        }
    }

    fn enter(&mut self, offset: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(
                offset,
                format!(
                    "condition is nested too deeply: at most {MAX_DEPTH} levels of parentheses, \
                     lists, calls and negations are allowed"
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// The whole condition: an expression followed by the end.
    fn parse_condition(&mut self) -> Result<Node, ExprError> {
        if self.peek().tok == Tok::Eof {
            return Err(ExprError::new(
                0,
                "empty condition; write an expression such as body.amount > 100",
            ));
        }
        let node = self.parse_or()?;
        let tok = self.peek().clone();
        match tok.tok {
            Tok::Eof => Ok(node),
            Tok::RParen => Err(ExprError::new(
                tok.start,
                "unexpected ')' without a matching '('",
            )),
            Tok::RBracket => Err(ExprError::new(
                tok.start,
                "unexpected ']' without a matching '['",
            )),
            _ => Err(self.unexpected("end of condition")),
        }
    }

    /// `expected {what}, found '...'` at the current token, with a hint for common slips.
    #[cold]
    #[inline(never)]
    fn unexpected(&self, what: &str) -> ExprError {
        let tok = self.peek();
        let mut message = format!("expected {what}, found {}", self.describe(tok));
        match &tok.tok {
            Tok::Minus => message.push_str(
                "; conditions have no subtraction, and names cannot contain '-': \
                 for such a key write [\"key-name\"]",
            ),
            Tok::Ident(word) => {
                let lower = word.to_lowercase();
                if word != &lower && ["and", "or", "not", "in"].contains(&lower.as_str()) {
                    message.push_str(&format!("; operators are lowercase: write '{lower}'"));
                } else if what == "end of condition" {
                    message.push_str(
                        "; join conditions with '&&' or '||', compare with '==', '<', 'in', ...",
                    );
                }
            }
            _ => {}
        }
        ExprError::new(tok.start, message)
    }

    /// `expected a value after '...'` at the current token.
    #[cold]
    #[inline(never)]
    fn expected_value(&self) -> ExprError {
        let tok = self.peek();
        let mut message = match self.prev() {
            Some(prev) => format!("expected a value after {}", self.describe(prev)),
            None => "expected a value".to_owned(),
        };
        if tok.tok != Tok::Eof {
            message.push_str(&format!(", found {}", self.describe(tok)));
        }
        let negation = tok.tok == Tok::Bang || matches!(&tok.tok, Tok::Ident(s) if s == "not");
        if negation {
            message.push_str("; put a negation in parentheses, e.g. (not exists(body.x))");
        }
        ExprError::new(tok.start, message)
    }

    fn parse_or(&mut self) -> Result<Node, ExprError> {
        let mut items = vec![self.parse_and()?];
        while self.peek().tok == Tok::OrOr || self.is_kw("or") {
            self.advance();
            items.push(self.parse_and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::Or(items)
        })
    }

    fn parse_and(&mut self) -> Result<Node, ExprError> {
        let mut items = vec![self.parse_not()?];
        while self.peek().tok == Tok::AndAnd || self.is_kw("and") {
            self.advance();
            items.push(self.parse_not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::And(items)
        })
    }

    fn parse_not(&mut self) -> Result<Node, ExprError> {
        if self.peek().tok == Tok::Bang || self.is_kw("not") {
            let op = self.advance();
            self.enter(op)?;
            let inner = self.parse_not()?;
            self.leave();
            return Ok(Node::Not(Box::new(inner)));
        }
        self.parse_cmp()
    }

    /// The comparison operator at the current position, with how many tokens it spans.
    fn cmp_op(&self) -> Option<(CmpOp, usize)> {
        Some(match &self.peek().tok {
            Tok::Eq => (CmpOp::Eq, 1),
            Tok::Ne => (CmpOp::Ne, 1),
            Tok::Lt => (CmpOp::Lt, 1),
            Tok::Le => (CmpOp::Le, 1),
            Tok::Gt => (CmpOp::Gt, 1),
            Tok::Ge => (CmpOp::Ge, 1),
            Tok::Ident(s) if s == "in" => (CmpOp::In, 1),
            Tok::Ident(s)
                if s == "not" && matches!(&self.peek_at(1).tok, Tok::Ident(t) if t == "in") =>
            {
                (CmpOp::NotIn, 2)
            }
            _ => return None,
        })
    }

    fn parse_cmp(&mut self) -> Result<Node, ExprError> {
        let lhs = self.parse_unary()?;
        let Some((op, len)) = self.cmp_op() else {
            return Ok(lhs);
        };
        let offset = self.peek().start;
        for _ in 0..len {
            self.advance();
        }
        let rhs = self.parse_unary()?;
        if let Some((op2, _)) = self.cmp_op() {
            return Err(self.chained(op, op2));
        }
        Ok(Node::Cmp {
            op,
            offset,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        })
    }

    #[cold]
    #[inline(never)]
    fn chained(&self, op: CmpOp, op2: CmpOp) -> ExprError {
        ExprError::new(
            self.peek().start,
            format!(
                "comparisons cannot be chained ('{}' after '{}'); join them with '&&', \
                 e.g. a < b && b < c",
                op2.symbol(),
                op.symbol()
            ),
        )
    }

    fn parse_unary(&mut self) -> Result<Node, ExprError> {
        if self.peek().tok == Tok::Minus {
            let op = self.advance();
            self.enter(op)?;
            let inner = self.parse_unary()?;
            self.leave();
            // Fold negative literals so that `-5` is a plain number.
            if let Node::Lit(v) = &inner
                && let Value::Number(n) = v.as_ref()
                && let Some(neg) = negate(n)
            {
                return Ok(lit(Value::Number(neg)));
            }
            return Ok(Node::Neg {
                inner: Box::new(inner),
                offset: op,
            });
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Node, ExprError> {
        let value = match &self.peek().tok {
            Tok::Num(n) => Value::Number(n.clone()),
            Tok::Str(s) => Value::String(s.clone()),
            Tok::Ident(name) => match name.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                "and" | "or" | "not" | "in" => return Err(self.expected_value()),
                _ if self.peek_at(1).tok == Tok::LParen => return self.parse_call(),
                _ => return self.parse_path(),
            },
            Tok::LBracket => return self.parse_list(),
            Tok::LParen => return self.parse_group(),
            _ => return Err(self.expected_value()),
        };
        self.advance();
        Ok(lit(value))
    }

    fn parse_group(&mut self) -> Result<Node, ExprError> {
        let open = self.advance();
        self.enter(open)?;
        let inner = self.parse_or()?;
        match self.peek().tok {
            Tok::RParen => {
                self.advance();
            }
            Tok::Eof => return Err(ExprError::new(open, "unclosed '('; add ')'")),
            _ => return Err(self.unexpected("')' to close '('")),
        }
        self.leave();
        Ok(inner)
    }

    /// The name of the identifier at the current position.
    fn ident(&self) -> String {
        match &self.peek().tok {
            Tok::Ident(name) => name.clone(),
            _ => String::new(),
        }
    }

    fn parse_list(&mut self) -> Result<Node, ExprError> {
        let open = self.advance();
        self.enter(open)?;
        let mut items = Vec::new();
        if self.peek().tok == Tok::RBracket {
            self.advance();
        } else {
            loop {
                items.push(self.parse_or()?);
                match self.peek().tok {
                    Tok::Comma => {
                        self.advance();
                    }
                    Tok::RBracket => {
                        self.advance();
                        break;
                    }
                    Tok::Eof => return Err(ExprError::new(open, "unclosed '['; add ']'")),
                    _ => return Err(self.unexpected("',' or ']' in list")),
                }
            }
        }
        self.leave();
        // A list of literals is itself a literal.
        if items.iter().all(|item| matches!(item, Node::Lit(_))) {
            let values = items
                .into_iter()
                .map(|item| match item {
                    Node::Lit(v) => *v,
                    _ => Value::Null,
                })
                .collect();
            return Ok(lit(Value::Array(values)));
        }
        Ok(Node::List(items))
    }

    fn parse_call(&mut self) -> Result<Node, ExprError> {
        let Some(func) = Func::lookup(&self.ident()) else {
            return Err(unknown_function(&self.ident(), self.peek().start));
        };
        let offset = self.advance(); // the name
        let open = self.advance(); // '('
        self.enter(open)?;
        let mut args = Vec::new();
        let mut arg_offsets = Vec::new();
        if self.peek().tok == Tok::RParen {
            self.advance();
        } else {
            loop {
                arg_offsets.push(self.peek().start);
                args.push(self.parse_or()?);
                match self.peek().tok {
                    Tok::Comma => {
                        self.advance();
                    }
                    Tok::RParen => {
                        self.advance();
                        break;
                    }
                    _ => return Err(self.bad_call_end(func, open)),
                }
            }
        }
        self.leave();
        if args.len() != func.arity() {
            return Err(wrong_arity(func, args.len(), offset));
        }
        if func == Func::Exists && !matches!(args[0], Node::Path(_)) {
            return Err(ExprError::new(
                arg_offsets[0],
                "exists needs a path such as exists(body.field)",
            ));
        }
        Ok(Node::Call { func, offset, args })
    }

    #[cold]
    #[inline(never)]
    fn bad_call_end(&self, func: Func, open: usize) -> ExprError {
        if self.peek().tok == Tok::Eof {
            ExprError::new(open, format!("unclosed '(' of {}(; add ')'", func.name()))
        } else {
            self.unexpected(&format!("',' or ')' in the call of {}", func.name()))
        }
    }

    fn parse_path(&mut self) -> Result<Node, ExprError> {
        let root = self.ident();
        let offset = self.advance();
        let mut segs = Vec::new();
        loop {
            match self.peek().tok {
                Tok::Dot => {
                    self.advance();
                    let tok = self.peek().clone();
                    match tok.tok {
                        Tok::Ident(name) => {
                            self.advance();
                            segs.push(Seg::Field(name));
                        }
                        Tok::Num(_) => {
                            let text = self.describe(&tok);
                            return Err(ExprError::new(
                                tok.start,
                                format!(
                                    "expected a field name after '.', found {text}; \
                                     for a position in a list write [{}]",
                                    text.trim_matches('\'')
                                ),
                            ));
                        }
                        _ => {
                            let found = self.describe(&tok);
                            let mut message =
                                format!("expected a field name after '.', found {found}");
                            if let Tok::Str(_) = tok.tok {
                                message.push_str(&format!(
                                    "; for a quoted key drop the '.' and write [{found}]"
                                ));
                            }
                            return Err(ExprError::new(tok.start, message));
                        }
                    }
                }
                Tok::LBracket => {
                    let open = self.advance();
                    let tok = self.peek().clone();
                    let seg = match &tok.tok {
                        Tok::Str(key) => Seg::Field(key.clone()),
                        Tok::Num(n) => match n.as_u64().and_then(|i| usize::try_from(i).ok()) {
                            Some(i) => Seg::Index(i),
                            None => {
                                return Err(ExprError::new(
                                    tok.start,
                                    "a list position must be a whole number such as [0]",
                                ));
                            }
                        },
                        Tok::Minus => {
                            return Err(ExprError::new(
                                tok.start,
                                "negative list positions are not supported; \
                                 a list position is a whole number such as [0]",
                            ));
                        }
                        _ => {
                            return Err(ExprError::new(
                                tok.start,
                                format!(
                                    "expected a list position such as [0] or a quoted key such \
                                     as [\"key\"] after '[', found {}",
                                    self.describe(&tok)
                                ),
                            ));
                        }
                    };
                    self.advance();
                    match self.peek().tok {
                        Tok::RBracket => {
                            self.advance();
                        }
                        Tok::Eof => {
                            return Err(ExprError::new(open, "unclosed '['; add ']'"));
                        }
                        _ => return Err(self.unexpected("']'")),
                    }
                    segs.push(seg);
                }
                _ => break,
            }
        }
        Ok(Node::Path(Box::new(Path { root, offset, segs })))
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

static NULL: Value = Value::Null;

fn eval_node<'a>(node: &'a Node, ctx: &'a Value) -> Result<Cow<'a, Value>, ExprError> {
    Ok(match node {
        Node::Lit(v) => Cow::Borrowed(v.as_ref()),
        Node::List(items) => Cow::Owned(Value::Array(
            items
                .iter()
                .map(|item| eval_node(item, ctx).map(Cow::into_owned))
                .collect::<Result<_, _>>()?,
        )),
        Node::Path(path) => Cow::Borrowed(resolve(path, ctx).unwrap_or(&NULL)),
        Node::Not(inner) => Cow::Owned(Value::Bool(!truthy(eval_node(inner, ctx)?.as_ref()))),
        Node::Neg { inner, offset } => {
            let v = eval_node(inner, ctx)?;
            match v.as_ref() {
                Value::Number(n) => {
                    Cow::Owned(Value::Number(negate(n).ok_or_else(|| {
                        ExprError::new(*offset, "'-' cannot negate this number")
                    })?))
                }
                other => {
                    return Err(ExprError::new(
                        *offset,
                        format!("'-' needs a number, found {}", type_name(other)),
                    ));
                }
            }
        }
        Node::And(items) => {
            for item in items {
                if !truthy(eval_node(item, ctx)?.as_ref()) {
                    return Ok(Cow::Owned(Value::Bool(false)));
                }
            }
            Cow::Owned(Value::Bool(true))
        }
        Node::Or(items) => {
            for item in items {
                if truthy(eval_node(item, ctx)?.as_ref()) {
                    return Ok(Cow::Owned(Value::Bool(true)));
                }
            }
            Cow::Owned(Value::Bool(false))
        }
        Node::Cmp {
            op,
            offset,
            lhs,
            rhs,
        } => {
            let a = eval_node(lhs, ctx)?;
            let b = eval_node(rhs, ctx)?;
            Cow::Owned(Value::Bool(compare(*op, *offset, &a, &b)?))
        }
        Node::Call { func, offset, args } => call(*func, *offset, args, ctx)?,
    })
}

fn resolve<'a>(path: &Path, ctx: &'a Value) -> Option<&'a Value> {
    let mut v = ctx.get(path.root.as_str())?;
    for seg in &path.segs {
        v = match seg {
            Seg::Field(key) => v.get(key.as_str())?,
            Seg::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

fn compare(op: CmpOp, offset: usize, a: &Value, b: &Value) -> Result<bool, ExprError> {
    let ordering = |a: &Value, b: &Value| -> Result<Ordering, ExprError> {
        let ord = match (a, b) {
            (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            _ => None,
        };
        ord.ok_or_else(|| {
            ExprError::new(
                offset,
                format!(
                    "'{}' needs two numbers or two strings, found {} and {}",
                    op.symbol(),
                    type_name(a),
                    type_name(b)
                ),
            )
        })
    };
    Ok(match op {
        CmpOp::Eq => json_eq(a, b),
        CmpOp::Ne => !json_eq(a, b),
        CmpOp::Lt => ordering(a, b)? == Ordering::Less,
        CmpOp::Le => ordering(a, b)? != Ordering::Greater,
        CmpOp::Gt => ordering(a, b)? == Ordering::Greater,
        CmpOp::Ge => ordering(a, b)? != Ordering::Less,
        CmpOp::In => contains("'in'", offset, b, a)?,
        CmpOp::NotIn => !contains("'not in'", offset, b, a)?,
    })
}

/// Membership of `needle` in the array `haystack`, or substring of the string `haystack`;
/// a null haystack contains nothing.
fn contains(
    what: &str,
    offset: usize,
    haystack: &Value,
    needle: &Value,
) -> Result<bool, ExprError> {
    match haystack {
        Value::Null => Ok(false),
        Value::Array(items) => Ok(items.iter().any(|item| json_eq(item, needle))),
        Value::String(s) => match needle {
            Value::String(n) => Ok(s.contains(n.as_str())),
            other => Err(ExprError::new(
                offset,
                format!(
                    "{what} looks for a string in a string, found {} in string",
                    type_name(other)
                ),
            )),
        },
        other => Err(ExprError::new(
            offset,
            format!(
                "{what} looks in an array or a string, found {}",
                type_name(other)
            ),
        )),
    }
}

fn call<'a>(
    func: Func,
    offset: usize,
    args: &'a [Node],
    ctx: &'a Value,
) -> Result<Cow<'a, Value>, ExprError> {
    let name = func.name();
    if func == Func::Exists {
        let found = match &args[0] {
            Node::Path(path) => resolve(path, ctx).is_some_and(|v| !v.is_null()),
            _ => false,
        };
        return Ok(Cow::Owned(Value::Bool(found)));
    }
    let mut values = Vec::with_capacity(args.len());
    for arg in args {
        values.push(eval_node(arg, ctx)?);
    }
    let a = values[0].as_ref();
    let type_error = |needs: &str| {
        let found: Vec<&str> = values.iter().map(|v| type_name(v)).collect();
        ExprError::new(
            offset,
            format!("{name} needs {needs}, found {}", found.join(" and ")),
        )
    };
    let out = match func {
        Func::Exists => Value::Bool(false), // handled above
        Func::Len => Value::from(match a {
            Value::Null => 0,
            Value::String(s) => s.chars().count(),
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => return Err(type_error("a string, an array or an object")),
        }),
        Func::Contains => Value::Bool(contains(name, offset, a, values[1].as_ref())?),
        Func::StartsWith | Func::EndsWith => match (a, values[1].as_ref()) {
            (Value::String(s), Value::String(affix)) => Value::Bool(if func == Func::StartsWith {
                s.starts_with(affix.as_str())
            } else {
                s.ends_with(affix.as_str())
            }),
            (Value::Null, Value::String(_)) => Value::Bool(false),
            _ => return Err(type_error("two strings")),
        },
        Func::Lower | Func::Upper => match a {
            Value::Null => Value::Null,
            Value::String(s) => Value::String(if func == Func::Lower {
                s.to_lowercase()
            } else {
                s.to_uppercase()
            }),
            _ => return Err(type_error("a string")),
        },
        Func::Number => match a {
            Value::Number(_) => return Ok(values.swap_remove(0)),
            Value::String(s) => parse_number(s).map_or(Value::Null, Value::Number),
            _ => Value::Null,
        },
        Func::Xpath => match values[1].as_ref() {
            Value::String(path) => {
                let found = tilts_adapters::xml::select(a, path)
                    .map_err(|e| ExprError::new(offset, format!("xpath: {e}")))?;
                match found.first() {
                    None => Value::Null,
                    Some(v) => match tilts_adapters::xml::text_of(v) {
                        Some(t) => Value::String(t.to_string()),
                        None => (*v).clone(),
                    },
                }
            }
            _ => return Err(type_error("XML data and a path string")),
        },
        Func::String => match a {
            Value::Null => Value::Null,
            Value::String(_) => return Ok(values.swap_remove(0)),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            other => Value::String(other.to_string()),
        },
    };
    Ok(Cow::Owned(out))
}

/// Parses decimal text (surrounding whitespace allowed) into a JSON number.
fn parse_number(text: &str) -> Option<Number> {
    let text = text.trim();
    if !text.chars().any(|c| c.is_ascii_digit())
        || !text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'))
    {
        return None;
    }
    if let Ok(i) = text.parse::<i64>() {
        return Some(Number::from(i));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(Number::from(u));
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

fn negate(n: &Number) -> Option<Number> {
    if let Some(neg) = n.as_i64().and_then(i64::checked_neg) {
        return Some(Number::from(neg));
    }
    n.as_f64().and_then(|f| Number::from_f64(-f))
}

fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Numeric order: exact between integers, as floats otherwise (so `1 == 1.0`).
fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Structural equality with numbers compared numerically.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "body": {
                "amount": 150,
                "price": 1.0,
                "kind": "social",
                "channel": "web",
                "serviceCode": "PMLP-42",
                "attachments": ["a.pdf", "b.pdf"],
                "tags": ["urgent", 7],
                "name": "Äiti Öljy",
                "empty": "",
                "zero": 0,
                "none": null,
                "obj": {"a": 1, "b": [1, 2]},
                "key with space": "yes",
                "count": "42",
                "flag": true,
            },
            "registry": {
                "status": 404,
                "body": {"items": [{"state": "open"}, {"state": null}]}
            },
            "headers": {"content-type": "application/json"},
        })
    }

    fn eval(src: &str) -> Value {
        Expr::parse(src)
            .unwrap_or_else(|e| panic!("parse {src:?}: {e} at {}", e.offset))
            .eval(&ctx())
            .unwrap_or_else(|e| panic!("eval {src:?}: {e} at {}", e.offset))
    }

    fn yes(src: &str) -> bool {
        match eval(src) {
            Value::Bool(b) => b,
            other => panic!("{src:?} gave {other}, not a boolean"),
        }
    }

    fn parse_err(src: &str) -> ExprError {
        match Expr::parse(src) {
            Ok(expr) => panic!("{src:?} parsed as {expr:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the parse error's offset and that its message contains `needle`.
    fn assert_parse_err(src: &str, offset: usize, needle: &str) {
        let e = parse_err(src);
        assert!(
            e.message.contains(needle),
            "{src:?}: message {:?} lacks {needle:?}",
            e.message
        );
        assert_eq!(e.offset, offset, "{src:?}: offset of {:?}", e.message);
    }

    fn eval_err(src: &str, ctx: &Value) -> ExprError {
        match Expr::parse(src).unwrap().eval(ctx) {
            Ok(v) => panic!("{src:?} evaluated to {v}"),
            Err(e) => e,
        }
    }

    #[test]
    fn examples_from_routes() {
        assert!(yes("registry.status == 404"));
        assert!(yes(
            r#"body.amount > 100 && body.kind == "social" || exists(body.urgent)"#
        ));
        assert!(!yes(r#"not (body.channel in ["web", "phone"])"#));
        assert!(yes(
            r#"starts_with(body.serviceCode, "PMLP-") && len(body.attachments) >= 1"#
        ));
        assert!(yes("registry.body.items[0].state != null"));
        assert!(!yes("registry.body.items[1].state != null"));
    }

    #[test]
    fn literals() {
        assert_eq!(eval(r#""a\"b\'c\\d\ne\tf""#), json!("a\"b'c\\d\ne\tf"));
        assert_eq!(eval(r#"'it\'s "ok"'"#), json!("it's \"ok\""));
        assert_eq!(eval("42"), json!(42));
        assert_eq!(eval("-42"), json!(-42));
        assert_eq!(eval("2.5"), json!(2.5));
        assert_eq!(eval("-2.5"), json!(-2.5));
        assert_eq!(eval("- -3"), json!(3));
        assert_eq!(eval("true"), json!(true));
        assert_eq!(eval("false"), json!(false));
        assert_eq!(eval("null"), json!(null));
        assert_eq!(
            eval("[1, 'a', null, [true]]"),
            json!([1, "a", null, [true]])
        );
        assert_eq!(eval("[]"), json!([]));
        assert_eq!(eval("[body.amount, -body.amount]"), json!([150, -150]));
        assert_eq!(eval("18446744073709551615"), json!(18446744073709551615u64));
    }

    #[test]
    fn paths() {
        assert_eq!(eval("body.amount"), json!(150));
        assert_eq!(eval("body"), ctx()["body"]);
        assert_eq!(eval(r#"body["key with space"]"#), json!("yes"));
        assert_eq!(
            eval(r#"headers['content-type']"#),
            json!("application/json")
        );
        assert_eq!(eval("body.obj.b[1]"), json!(2));
        assert_eq!(eval("registry.body.items[0].state"), json!("open"));
        assert_eq!(eval("body . obj [ 'a' ]"), json!(1));
        // Keywords are ordinary names after a dot.
        assert_eq!(eval("body.in"), json!(null));
    }

    #[test]
    fn missing_paths_are_null() {
        for src in [
            "body.nope",
            "body.nope.deeper[3]",
            "nobody.x",
            "body.attachments[9]",
            "body.attachments.x",
            "body.obj[0]",
            "body.amount.x",
            "body.kind[0]",
            "body.none.x",
        ] {
            assert_eq!(eval(src), Value::Null, "{src}");
        }
        assert!(yes("registry.body.x == null"));
        assert!(yes("body.nope == null"));
        // A context that is not an object has no roots.
        let e = Expr::parse("body.x == null").unwrap();
        assert!(e.eval_bool(&json!([1])).unwrap());
        assert!(e.eval_bool(&Value::Null).unwrap());
    }

    #[test]
    fn equality() {
        assert!(yes("1 == 1.0"));
        assert!(yes("body.price == 1"));
        assert!(yes("1.5 != 1"));
        assert!(yes("'a' == \"a\""));
        assert!(!yes("'1' == 1"));
        assert!(!yes("null == false"));
        assert!(!yes("0 == false"));
        assert!(yes("null == null"));
        assert!(yes("[1, 2.0, 'x'] == [1.0, 2, 'x']"));
        assert!(!yes("[1, 2] == [2, 1]"));
        assert!(!yes("[1] == [1, 1]"));
        assert!(yes("body.obj == body.obj"));
        assert!(yes("body.obj.b == [1.0, 2.0]"));
        assert!(!yes("body.obj == registry"));
        assert!(yes("body.kind != 'other'"));
        assert!(yes("18446744073709551615 != 18446744073709551614"));
        assert!(yes("9007199254740993 != 9007199254740992"));
    }

    #[test]
    fn ordering() {
        assert!(yes("body.amount > 100"));
        assert!(!yes("body.amount < 100"));
        assert!(yes("body.amount >= 150"));
        assert!(yes("body.amount <= 150"));
        assert!(!yes("body.amount > 150"));
        assert!(yes("1 < 1.5"));
        assert!(yes("-2 < -1"));
        assert!(yes("'abc' < 'abd'"));
        assert!(yes("'B' < 'a'"));
        assert!(yes("'2024-01-31' > '2024-01-09'"));
        assert!(yes("'a' <= 'a' && 'b' >= 'a'"));
        assert!(!yes("'b' < 'a'"));
    }

    #[test]
    fn ordering_errors_name_operator_and_types() {
        let e = eval_err("body.kind < 3", &ctx());
        assert_eq!(
            e.message,
            "'<' needs two numbers or two strings, found string and number"
        );
        assert_eq!(e.offset, 10);
        let e = eval_err("body.nope >= 1", &ctx());
        assert_eq!(
            e.message,
            "'>=' needs two numbers or two strings, found null and number"
        );
        let e = eval_err("[1] > body.obj", &ctx());
        assert!(
            e.message.contains("found array and object"),
            "{}",
            e.message
        );
        let e = eval_err("true <= false", &ctx());
        assert!(
            e.message.contains("found boolean and boolean"),
            "{}",
            e.message
        );
    }

    #[test]
    fn errors_never_contain_values() {
        let ctx = json!({"body": {"pk": "010190-12349", "tags": {"secret": "010190"}}});
        for src in [
            "body.pk < 3",
            "-body.pk",
            "len(body.pk == 1)",
            "body.pk in body.tags",
            "1 in body.pk",
            "contains(body.tags, 'x')",
            "contains(body.pk, 1)",
            "starts_with(body.pk, 1)",
            "ends_with(body.tags, 'x')",
            "lower(body.tags)",
            "upper(1)",
            "len(1)",
        ] {
            let e = eval_err(src, &ctx);
            assert!(!e.message.contains("010190"), "{src}: {}", e.message);
            assert!(!e.to_string().contains("010190"), "{src}: {e}");
            assert!(!format!("{e:?}").contains("010190"), "{src}: {e:?}");
        }
        let e = eval_err("body.pk < 3", &ctx);
        assert_eq!(
            e.to_string(),
            "'<' needs two numbers or two strings, found string and number"
        );
    }

    #[test]
    fn logic_and_precedence() {
        assert!(yes("true || false"));
        assert!(!yes("false || false"));
        assert!(yes("true && true"));
        assert!(!yes("true && false"));
        assert!(yes("true or false"));
        assert!(!yes("true and false"));
        assert!(!yes("!true"));
        assert!(yes("not false"));
        assert!(yes("!!true"));
        assert!(yes("not not true"));
        // && binds tighter than ||.
        assert!(yes("true || true && false"));
        assert!(yes("true or false and false"));
        assert!(!yes("(true || true) && false"));
        assert!(yes("false && true || true"));
        // ! binds looser than comparisons.
        assert!(yes("!body.amount == 3"));
        assert!(yes("not body.kind == 'x'"));
        assert!(!yes("!(body.amount == 150)"));
        assert!(yes("!body.nope"));
        // Short-circuit: the erroring right side is never evaluated.
        assert!(!yes("exists(body.nope) && body.nope > 1"));
        assert!(yes("!exists(body.nope) || body.nope > 1"));
        // Results are booleans, not operands.
        assert_eq!(eval("body.amount || 0"), json!(true));
        assert_eq!(eval("body.amount && body.kind"), json!(true));
    }

    #[test]
    fn long_chains_do_not_nest() {
        let src = vec!["body.flag"; 300].join(" && ");
        assert!(src.chars().count() <= MAX_LEN);
        assert!(Expr::parse(&src).unwrap().eval_bool(&ctx()).unwrap());
        let src = vec!["false"; 400].join(" || ");
        assert!(!Expr::parse(&src).unwrap().eval_bool(&ctx()).unwrap());
    }

    #[test]
    fn membership() {
        assert!(yes("body.channel in ['web', 'phone']"));
        assert!(!yes("'fax' in ['web', 'phone']"));
        assert!(yes("1.0 in [2, 1]"));
        assert!(yes("[1] in [[1.0], 2]"));
        assert!(yes("null in [null]"));
        assert!(yes("'urgent' in body.tags"));
        assert!(yes("7 in body.tags"));
        assert!(yes("'LP' in body.serviceCode"));
        assert!(!yes("'lp' in body.serviceCode"));
        assert!(yes("'' in 'x'"));
        assert!(yes("('x' in body.nope) == false"));
        assert!(!yes("'x' in body.nope"));
        assert!(yes("'fax' not in ['web', 'phone']"));
        assert!(!yes("'web' not in ['web']"));
        assert!(yes("not (body.channel in ['phone'])"));
        assert!(yes("body.channel in [body.kind, lower('WEB')]"));
        let e = eval_err("1 in body.serviceCode", &ctx());
        assert_eq!(
            e.message,
            "'in' looks for a string in a string, found number in string"
        );
        assert_eq!(e.offset, 2);
        let e = eval_err("'a' in body.obj", &ctx());
        assert_eq!(
            e.message,
            "'in' looks in an array or a string, found object"
        );
        let e = eval_err("'a' not in 5", &ctx());
        assert_eq!(
            e.message,
            "'not in' looks in an array or a string, found number"
        );
    }

    #[test]
    fn unary_minus() {
        assert_eq!(eval("-body.amount"), json!(-150));
        assert_eq!(eval("-body.price"), json!(-1.0));
        assert!(yes("-body.amount < 0"));
        let e = eval_err("-body.kind", &ctx());
        assert_eq!(e.message, "'-' needs a number, found string");
        assert_eq!(e.offset, 0);
        let e = eval_err("1 < -body.nope", &ctx());
        assert_eq!(e.message, "'-' needs a number, found null");
        assert_eq!(e.offset, 4);
    }

    #[test]
    fn function_exists() {
        assert!(yes("exists(body.kind)"));
        assert!(yes("exists(body.empty)"));
        assert!(yes("exists(body.zero)"));
        assert!(yes("exists(registry.body.items[0])"));
        assert!(!yes("exists(body.none)"));
        assert!(!yes("exists(body.nope)"));
        assert!(!yes("exists(registry.body.items[1].state)"));
        assert!(!yes("exists(nobody)"));
    }

    #[test]
    fn function_len() {
        assert_eq!(eval("len(body.name)"), json!(9)); // chars, not bytes
        assert_eq!(eval("len(body.attachments)"), json!(2));
        assert_eq!(eval("len(body.obj)"), json!(2));
        assert_eq!(eval("len('')"), json!(0));
        assert_eq!(eval("len(body.nope)"), json!(0));
        let e = eval_err("len(body.amount)", &ctx());
        assert_eq!(
            e.message,
            "len needs a string, an array or an object, found number"
        );
        assert_eq!(e.offset, 0);
    }

    #[test]
    fn function_contains() {
        assert!(yes("contains(body.serviceCode, 'MLP')"));
        assert!(!yes("contains(body.serviceCode, 'mlp')"));
        assert!(yes("contains(body.tags, 'urgent')"));
        assert!(yes("contains(body.tags, 7.0)"));
        assert!(!yes("contains(body.tags, 'x')"));
        assert!(!yes("contains(body.nope, 'x')"));
        let e = eval_err("contains(body.obj, 'a')", &ctx());
        assert_eq!(
            e.message,
            "contains looks in an array or a string, found object"
        );
        let e = eval_err("body.flag && contains(body.kind, 1)", &ctx());
        assert_eq!(
            e.message,
            "contains looks for a string in a string, found number in string"
        );
        assert_eq!(e.offset, 13);
    }

    #[test]
    fn functions_starts_and_ends_with() {
        assert!(yes("starts_with(body.serviceCode, 'PMLP-')"));
        assert!(!yes("starts_with(body.serviceCode, 'pmlp-')"));
        assert!(yes("ends_with(body.serviceCode, '-42')"));
        assert!(!yes("ends_with(body.serviceCode, 'PMLP')"));
        assert!(!yes("starts_with(body.nope, 'x')"));
        assert!(!yes("ends_with(body.nope, 'x')"));
        let e = eval_err("starts_with(body.amount, '1')", &ctx());
        assert_eq!(
            e.message,
            "starts_with needs two strings, found number and string"
        );
        let e = eval_err("ends_with(body.kind, body.nope)", &ctx());
        assert_eq!(
            e.message,
            "ends_with needs two strings, found string and null"
        );
    }

    #[test]
    fn functions_lower_upper() {
        assert_eq!(eval("lower(body.name)"), json!("äiti öljy"));
        assert_eq!(eval("upper(body.name)"), json!("ÄITI ÖLJY"));
        assert_eq!(eval("lower(body.nope)"), json!(null));
        assert!(yes("lower(body.serviceCode) == 'pmlp-42'"));
        let e = eval_err("upper(body.tags)", &ctx());
        assert_eq!(e.message, "upper needs a string, found array");
    }

    #[test]
    fn function_number() {
        assert_eq!(eval("number(body.count)"), json!(42));
        assert_eq!(eval("number(' 1.5 ')"), json!(1.5));
        assert_eq!(eval("number('-7')"), json!(-7));
        assert_eq!(eval("number('1e3')"), json!(1000.0));
        assert_eq!(eval("number(body.amount)"), json!(150));
        for src in [
            "number('abc')",
            "number('')",
            "number('1,5')",
            "number('NaN')",
            "number('inf')",
            "number('1e999')",
            "number(body.nope)",
            "number(true)",
            "number(body.tags)",
        ] {
            assert_eq!(eval(src), Value::Null, "{src}");
        }
        assert!(yes("number(body.count) > 40"));
    }

    #[test]
    fn function_string() {
        assert_eq!(eval("string(body.amount)"), json!("150"));
        assert_eq!(eval("string(2.5)"), json!("2.5"));
        assert_eq!(eval("string(body.flag)"), json!("true"));
        assert_eq!(eval("string(body.kind)"), json!("social"));
        assert_eq!(eval("string(body.nope)"), json!(null));
        assert_eq!(eval("string(body.obj)"), json!(r#"{"a":1,"b":[1,2]}"#));
        assert!(yes("starts_with(string(body.amount), '15')"));
    }

    #[test]
    fn truthiness() {
        let e = |src: &str| Expr::parse(src).unwrap().eval_bool(&ctx()).unwrap();
        for src in [
            "null",
            "false",
            "0",
            "0.0",
            "''",
            "[]",
            "body.obj.nope",
            "body.empty",
            "body.zero",
            "body.none",
        ] {
            assert!(!e(src), "{src} should be false");
        }
        for src in [
            "true",
            "1",
            "-1",
            "0.5",
            "'x'",
            "'false'",
            "[0]",
            "body",
            "body.obj",
            "body.amount",
        ] {
            assert!(e(src), "{src} should be true");
        }
        let empty_obj = json!({"o": {}});
        assert!(!Expr::parse("o").unwrap().eval_bool(&empty_obj).unwrap());
    }

    #[test]
    fn roots_lists_every_read_root() {
        let e = Expr::parse("registry.status == 404 && exists(body.x)").unwrap();
        assert_eq!(
            e.roots(),
            vec![("registry".to_owned(), 0), ("body".to_owned(), 33)]
        );
        let e =
            Expr::parse("len([params.a, query.b]) > 0 || not headers['x'] in [body.y]").unwrap();
        let names: Vec<String> = e.roots().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["params", "query", "headers", "body"]);
        let e = Expr::parse("body.a == body.b").unwrap();
        assert_eq!(
            e.roots(),
            vec![("body".to_owned(), 0), ("body".to_owned(), 10)]
        );
        assert!(
            Expr::parse("1 < 2 && 'x' in ['x']")
                .unwrap()
                .roots()
                .is_empty()
        );
        // Char offsets, not byte offsets.
        let e = Expr::parse("'ä' == sää").unwrap();
        assert_eq!(e.roots(), vec![("sää".to_owned(), 7)]);
    }

    #[test]
    fn source_debug_display() {
        let src = "  body.kind == 'social' ";
        let e = Expr::parse(src).unwrap();
        assert_eq!(e.source(), src);
        assert_eq!(format!("{e:?}"), format!("Expr({src:?})"));
        assert_eq!(e.to_string(), src);
        assert_eq!(e.clone(), e);
    }

    #[test]
    fn parse_errors_missing_values() {
        assert_parse_err("body.a &&", 9, "expected a value after '&&'");
        assert_parse_err("body.a && )", 10, "expected a value after '&&', found ')'");
        assert_parse_err("body.a ||", 9, "expected a value after '||'");
        assert_parse_err("body.a and", 10, "expected a value after 'and'");
        assert_parse_err("body.a == ", 10, "expected a value after '=='");
        assert_parse_err("not", 3, "expected a value after 'not'");
        assert_parse_err("-", 1, "expected a value after '-'");
        assert_parse_err("&& x", 0, "expected a value, found '&&'");
        assert_parse_err("()", 1, "expected a value after '(', found ')'");
        assert_parse_err("len(a,)", 6, "expected a value after ',', found ')'");
        assert_parse_err("[1,]", 3, "expected a value after ',', found ']'");
        assert_parse_err("a == and", 5, "expected a value after '==', found 'and'");
        assert_parse_err("a == !b", 5, "put a negation in parentheses");
        assert_parse_err("", 0, "empty condition");
        assert_parse_err("   ", 0, "empty condition");
    }

    #[test]
    fn parse_errors_operators() {
        assert_parse_err(
            "body.a = 1",
            7,
            "'=' is not an operator; write '==' to compare",
        );
        assert_parse_err("body.a & b", 7, "'&' is not an operator; write '&&'");
        assert_parse_err("body.a | b", 7, "'|' is not an operator; write '||'");
        assert_parse_err("a === 1", 2, "write '=='");
        assert_parse_err("a !== 1", 2, "write '!='");
        assert_parse_err("a <> 1", 2, "write '!='");
        assert_parse_err("a => 1", 2, "write '>='");
        assert_parse_err("a =< 1", 2, "write '<='");
        assert_parse_err("a + 1", 2, "no arithmetic");
        assert_parse_err("$body.a", 0, "paths need no '$'");
        assert_parse_err("{{ body.a }}", 0, "not a template");
        assert_parse_err("a # b", 2, "unexpected character '#'");
        assert_parse_err(
            "a < b < c",
            6,
            "comparisons cannot be chained ('<' after '<'); join them with '&&'",
        );
        assert_parse_err("a == b != c", 7, "comparisons cannot be chained");
        assert_parse_err("a in b in c", 7, "comparisons cannot be chained");
        assert_parse_err("a == b not in c", 7, "('not in' after '==')");
    }

    #[test]
    fn parse_errors_strings_and_numbers() {
        assert_parse_err("body.a == \"abc", 10, "unclosed string; add the closing \"");
        assert_parse_err("'abc", 0, "unclosed string; add the closing '");
        assert_parse_err("'abc\\", 0, "unclosed string");
        assert_parse_err("'a\\qb'", 2, "unknown escape '\\q' in string");
        assert_parse_err("1.", 1, "expected digits after '.'");
        assert_parse_err("1.2.3", 0, "malformed number '1.2.3'");
        assert_parse_err("12abc", 0, "malformed number '12abc'");
        assert_parse_err("body.1x", 5, "write [\"1x\"]");
        assert_parse_err(&"9".repeat(400), 0, "number is too large");
    }

    #[test]
    fn parse_errors_brackets() {
        assert_parse_err("a)", 1, "unexpected ')'");
        assert_parse_err("(a))", 3, "unexpected ')' without a matching '('");
        assert_parse_err("a]", 1, "unexpected ']'");
        assert_parse_err("(a && b", 0, "unclosed '('; add ')'");
        assert_parse_err("(a b)", 3, "expected ')' to close '(', found 'b'");
        assert_parse_err("[1, 2", 0, "unclosed '['; add ']'");
        assert_parse_err("[1 2]", 3, "expected ',' or ']' in list, found '2'");
        assert_parse_err("len(a", 3, "unclosed '(' of len(; add ')'");
        assert_parse_err(
            "len(a b)",
            6,
            "expected ',' or ')' in the call of len, found 'b'",
        );
        assert_parse_err("a[0", 1, "unclosed '['; add ']'");
        assert_parse_err("a[0 1]", 4, "expected ']', found '1'");
        assert_parse_err(
            "a[b]",
            2,
            "expected a list position such as [0] or a quoted key",
        );
        assert_parse_err("a[-1]", 2, "negative list positions are not supported");
        assert_parse_err("a[1.5]", 2, "whole number");
        assert_parse_err(
            "a.",
            2,
            "expected a field name after '.', found end of condition",
        );
        assert_parse_err(
            "a.'x'",
            2,
            "expected a field name after '.', found 'x'; for a quoted key drop the '.' and write ['x']",
        );
        assert_parse_err("a \"x y\"", 2, "expected end of condition, found \"x y\"");
        assert_parse_err("a.items.0", 8, "for a position in a list write [0]");
    }

    #[test]
    fn parse_errors_trailing_input() {
        assert_parse_err("body.a foo", 7, "expected end of condition, found 'foo'");
        assert_parse_err(
            "body.a == 1 body.b",
            12,
            "expected end of condition, found 'body'",
        );
        assert_parse_err("a AND b", 2, "operators are lowercase: write 'and'");
        assert_parse_err(
            "body.service-code == 1",
            12,
            "for such a key write [\"key-name\"]",
        );
        assert_parse_err("a == 1 not b", 7, "expected end of condition, found 'not'");
        assert_parse_err("len(a).b", 6, "expected end of condition, found '.'");
        assert_parse_err(
            "a == 'a very long string that goes on and on' x",
            46,
            "found 'x'",
        );
    }

    #[test]
    fn parse_errors_functions() {
        let e = parse_err("exist(body.x)");
        assert_eq!(
            e.message,
            "unknown function 'exist'; known functions: exists, len, contains, starts_with, \
             ends_with, lower, upper, number, string, xpath"
        );
        assert_eq!(e.offset, 0);
        assert_parse_err("a && Len(b)", 5, "unknown function 'Len'");
        assert_parse_err(
            "len(a, b)",
            0,
            "len takes 1 argument, found 2: write len(x)",
        );
        assert_parse_err("len()", 0, "len takes 1 argument, found 0");
        assert_parse_err(
            "x || contains(a)",
            5,
            "contains takes 2 arguments, found 1: write contains(haystack, needle)",
        );
        assert_parse_err("starts_with('a')", 0, "starts_with takes 2 arguments");
        assert_parse_err(
            "exists('a')",
            7,
            "exists needs a path such as exists(body.field)",
        );
        assert_parse_err("exists(lower(a))", 7, "exists needs a path");
        // An unknown function is reported before its arguments are looked at.
        assert_parse_err("nope(a &&)", 0, "unknown function 'nope'");
    }

    #[test]
    fn offsets_are_chars_not_bytes() {
        assert_parse_err("'ää' = 1", 5, "'=' is not an operator");
        let e = eval_err("'ää' < 1", &ctx());
        assert_eq!(e.offset, 5);
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(eval(&nested(MAX_DEPTH)), json!(1));
        assert_parse_err(&nested(MAX_DEPTH + 1), MAX_DEPTH, "nested too deeply");
        let nots = |n: usize| format!("{}true", "!".repeat(n));
        assert_eq!(eval(&nots(MAX_DEPTH)), json!(true));
        assert_parse_err(&nots(MAX_DEPTH + 1), MAX_DEPTH, "nested too deeply");
        assert_parse_err(&"not ".repeat(100), 4 * MAX_DEPTH, "nested too deeply");
        assert_parse_err(
            &format!("{}1", "-".repeat(100)),
            MAX_DEPTH,
            "nested too deeply",
        );
        assert_parse_err(&"[".repeat(100), MAX_DEPTH, "nested too deeply");
        assert_parse_err(&"len(".repeat(100), 4 * MAX_DEPTH + 3, "nested too deeply");
        // The worst a hostile config can do within the length limit is rejected cleanly.
        assert_parse_err(&"(".repeat(MAX_LEN), MAX_DEPTH, "nested too deeply");
    }

    #[test]
    fn worst_cases_fit_half_a_default_thread_stack() {
        // Rust threads and tokio workers get 2 MiB; the deepest conditions, parsed, evaluated
        // and dropped, need far less even unoptimised.
        let d = MAX_DEPTH;
        let cases = [
            format!("{}body.flag{}", "(".repeat(d), ")".repeat(d)),
            format!("{}body.flag", "!".repeat(d)),
            format!("{}body.flag", "not ".repeat(d)),
            format!("{}body.amount", "-".repeat(d)),
            format!("{}body.kind{}", "lower(".repeat(d), ")".repeat(d)),
            format!("{}body.kind{}", "[".repeat(d), "]".repeat(d)),
            format!("{}1{}", "(1 == ".repeat(d), ")".repeat(d)),
            "(".repeat(MAX_LEN),
            "[".repeat(MAX_LEN),
            "len(".repeat(MAX_LEN / 4),
            "-".repeat(MAX_LEN),
        ];
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                for (i, src) in cases.iter().enumerate() {
                    let parsed = Expr::parse(src);
                    assert_eq!(parsed.is_ok(), i < 7, "case {i}: {parsed:?}");
                    if let Ok(expr) = parsed {
                        let _ = expr.eval(&ctx());
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn expr_is_send_and_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Expr>();
        check::<ExprError>();
    }

    #[test]
    fn length_limit() {
        let ok = format!("body.kind == '{}'", "x".repeat(MAX_LEN - 15));
        assert_eq!(ok.chars().count(), MAX_LEN);
        assert!(Expr::parse(&ok).is_ok());
        let long = format!("body.kind == '{}'", "x".repeat(MAX_LEN - 14));
        let e = parse_err(&long);
        assert_eq!(e.offset, MAX_LEN);
        assert_eq!(
            e.message,
            "condition is too long: 4097 characters, at most 4096 are allowed"
        );
        // Chars, not bytes.
        let wide = format!("'{}'", "ä".repeat(MAX_LEN - 2));
        assert!(Expr::parse(&wide).is_ok());
    }

    #[test]
    fn whitespace_and_layout() {
        assert!(yes("\n  body.amount > 100\n  && body.kind == 'social'\n"));
        assert!(yes("(body.amount>100)&&(body.kind=='social')"));
        assert!(yes("'multi\nline' == \"multi\\nline\""));
    }

    #[test]
    fn xpath_selects_in_xml_read_as_data() {
        let ctx = json!({"person": {"body": {"GetPersonResponse": {"Person": [
            {"@id": "1", "Status": "active", "Name": {"@lang": "lv", "#text": "Anna"}},
            {"@id": "2", "Status": "deceased"}
        ]}}}});
        let ev = |src: &str| Expr::parse(src).unwrap().eval(&ctx).unwrap();
        assert_eq!(
            ev(r#"xpath(person.body, "//Person/Status")"#),
            json!("active")
        );
        assert_eq!(
            ev(r#"xpath(person.body, "//Person[2]/Status")"#),
            json!("deceased")
        );
        assert_eq!(ev(r#"xpath(person.body, "//Person/@id")"#), json!("1"));
        assert_eq!(ev(r#"xpath(person.body, "//Person/Name")"#), json!("Anna"));
        assert_eq!(ev(r#"xpath(person.body, "//Nothing")"#), Value::Null);
        assert_eq!(ev(r#"xpath(person.missing, "//Person")"#), Value::Null);
        let e = Expr::parse(r#"xpath(person.body, "//[")"#)
            .unwrap()
            .eval(&ctx)
            .unwrap_err();
        assert!(e.message.starts_with("xpath: "), "{}", e.message);
        let e = Expr::parse("xpath(person.body, 1)")
            .unwrap()
            .eval(&ctx)
            .unwrap_err();
        assert!(e.message.contains("a path string"), "{}", e.message);
    }
}
