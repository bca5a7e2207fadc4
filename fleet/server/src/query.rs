//! The query language of dynamic groups: a small boolean filter over a robot's inventory and
//! tags, in the spirit of hawkBit's target filters.
//!
//! ```text
//! query      = or
//! or         = and { "or" and }
//! and        = unary { "and" unary }
//! unary      = "not" unary | "(" or ")" | comparison
//! comparison = field ( "=" | "!=" | "~" ) string
//! field      = id | compatible | version | state | board | os | os_version | kernel
//!            | address | tag.NAME
//! string     = '"' { any character but '"' and '\', or '\"', or '\\' } '"'
//! ```
//!
//! `=` is exact; `~` is "contains", ignoring case, because operators type `raspberry pi` for
//! `Raspberry Pi 5 Model B Rev 1.0`. `a != b` is `not (a = b)`. A field the robot has no value
//! for (no inventory yet, a tag it lacks) matches neither `=` nor `~`, so it matches `!=`.
//! `address` has many values and matches when any of them does. Keywords are case-insensitive;
//! `and` binds tighter than `or`.
//!
//! The parser is hand-written: the grammar is a dozen lines, and its errors name the column
//! (1-based, in characters) where the query stops making sense.

use std::collections::BTreeMap;
use std::fmt;

use rota_protocol::robot::Inventory;

/// Why a query does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct QueryError {
    /// 1-based character position.
    pub column: usize,
    pub message: String,
}

/// The robot facts a query can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Id,
    Compatible,
    Version,
    State,
    Board,
    Os,
    OsVersion,
    Kernel,
    Address,
    Tag(String),
}

/// Longer queries are refused: the parser and the matcher recurse once per parenthesis and
/// `not`, and a request must not be able to exhaust a server thread's stack.
pub const MAX_QUERY_CHARS: usize = 1000;

const FIELDS: &str =
    "id, compatible, version, state, board, os, os_version, kernel, address or tag.NAME";

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "id" => Field::Id,
            "compatible" => Field::Compatible,
            "version" => Field::Version,
            "state" => Field::State,
            "board" => Field::Board,
            "os" => Field::Os,
            "os_version" => Field::OsVersion,
            "kernel" => Field::Kernel,
            "address" => Field::Address,
            _ => {
                let tag = name.strip_prefix("tag.")?;
                rota_protocol::robot::validate_tag(tag, "").ok()?;
                Field::Tag(tag.to_string())
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Equals,
    NotEquals,
    Contains,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Compare(Field, Op, String),
    Not(Box<Query>),
    And(Box<Query>, Box<Query>),
    Or(Box<Query>, Box<Query>),
}

/// What a query is evaluated against: one robot as the server knows it.
pub struct Facts<'a> {
    pub id: &'a str,
    pub compatible: &'a str,
    pub version: Option<&'a str>,
    pub state: &'a str,
    pub inventory: Option<&'a Inventory>,
    /// Operator tags; they win over the robot's own of the same name.
    pub tags: &'a BTreeMap<String, String>,
}

impl Facts<'_> {
    fn values(&self, field: &Field) -> Vec<&str> {
        let inventory = |get: fn(&Inventory) -> Option<&String>| {
            self.inventory.and_then(get).map(String::as_str)
        };
        let one = match field {
            Field::Id => Some(self.id),
            Field::Compatible => Some(self.compatible),
            Field::Version => self.version,
            Field::State => Some(self.state),
            Field::Board => inventory(|i| i.board.as_ref()),
            Field::Os => inventory(|i| i.os.as_ref()),
            Field::OsVersion => inventory(|i| i.os_version.as_ref()),
            Field::Kernel => inventory(|i| i.kernel.as_ref()),
            Field::Address => {
                return self.inventory.map_or_else(Vec::new, |i| {
                    i.addresses.iter().map(String::as_str).collect()
                })
            }
            Field::Tag(name) => self
                .tags
                .get(name)
                .or_else(|| self.inventory.and_then(|i| i.tags.get(name)))
                .map(String::as_str),
        };
        one.into_iter().collect()
    }
}

impl Query {
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError {
                column: MAX_QUERY_CHARS + 1,
                message: format!("a query is at most {MAX_QUERY_CHARS} characters"),
            });
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            tokens,
            next: 0,
            end_column: text.chars().count() + 1,
        };
        let query = parser.or()?;
        match parser.peek() {
            None => Ok(query),
            Some((token, column)) => Err(QueryError {
                column,
                message: format!("unexpected {token}: expected and, or, or the end"),
            }),
        }
    }

    pub fn matches(&self, facts: &Facts) -> bool {
        match self {
            Query::Compare(field, op, wanted) => {
                let values = facts.values(field);
                let equal = || values.iter().any(|value| value == wanted);
                match op {
                    Op::Equals => equal(),
                    Op::NotEquals => !equal(),
                    Op::Contains => {
                        let wanted = wanted.to_lowercase();
                        values
                            .iter()
                            .any(|value| value.to_lowercase().contains(&wanted))
                    }
                }
            }
            Query::Not(inner) => !inner.matches(facts),
            Query::And(left, right) => left.matches(facts) && right.matches(facts),
            Query::Or(left, right) => left.matches(facts) || right.matches(facts),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Str(String),
    Op(Op),
    Open,
    Close,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(word) => write!(f, "`{word}`"),
            Token::Str(text) => write!(f, "string {text:?}"),
            Token::Op(Op::Equals) => f.write_str("`=`"),
            Token::Op(Op::NotEquals) => f.write_str("`!=`"),
            Token::Op(Op::Contains) => f.write_str("`~`"),
            Token::Open => f.write_str("`(`"),
            Token::Close => f.write_str("`)`"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Token, usize)>, QueryError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().enumerate().peekable();
    while let Some((index, c)) = chars.next() {
        let column = index + 1;
        let token = match c {
            c if c.is_whitespace() => continue,
            '(' => Token::Open,
            ')' => Token::Close,
            '=' => Token::Op(Op::Equals),
            '~' => Token::Op(Op::Contains),
            '!' if chars.next_if(|(_, c)| *c == '=').is_some() => Token::Op(Op::NotEquals),
            '"' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((backslash, '\\')) => match chars.next() {
                            Some((_, c @ ('"' | '\\'))) => value.push(c),
                            Some((_, other)) => {
                                return Err(QueryError {
                                    column: backslash + 1,
                                    message: format!(
                                        "unknown escape \\{other}: only \\\" and \\\\ are allowed"
                                    ),
                                })
                            }
                            None => break,
                        },
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(QueryError {
                                column,
                                message: "this string has no closing quote".into(),
                            })
                        }
                    }
                }
                Token::Str(value)
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut word = String::from(c);
                while let Some((_, c)) = chars
                    .next_if(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                {
                    word.push(c);
                }
                Token::Word(word)
            }
            other => {
                return Err(QueryError {
                    column,
                    message: format!(
                        "unexpected character {other:?}: strings need double quotes, \
                         operators are =, != and ~"
                    ),
                })
            }
        };
        tokens.push((token, column));
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    end_column: usize,
}

impl Parser {
    fn peek(&self) -> Option<(&Token, usize)> {
        self.tokens
            .get(self.next)
            .map(|(token, column)| (token, *column))
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        let found = matches!(self.peek(), Some((Token::Word(word), _)) if word.eq_ignore_ascii_case(keyword));
        if found {
            self.next += 1;
        }
        found
    }

    fn error_here(&self, expected: &str) -> QueryError {
        match self.peek() {
            Some((token, column)) => QueryError {
                column,
                message: format!("expected {expected}, found {token}"),
            },
            None => QueryError {
                column: self.end_column,
                message: format!("expected {expected}, found the end of the query"),
            },
        }
    }

    fn or(&mut self) -> Result<Query, QueryError> {
        let mut query = self.and()?;
        while self.keyword("or") {
            query = Query::Or(Box::new(query), Box::new(self.and()?));
        }
        Ok(query)
    }

    fn and(&mut self) -> Result<Query, QueryError> {
        let mut query = self.unary()?;
        while self.keyword("and") {
            query = Query::And(Box::new(query), Box::new(self.unary()?));
        }
        Ok(query)
    }

    fn unary(&mut self) -> Result<Query, QueryError> {
        if self.keyword("not") {
            return Ok(Query::Not(Box::new(self.unary()?)));
        }
        if let Some((Token::Open, _)) = self.peek() {
            self.next += 1;
            let inner = self.or()?;
            return match self.peek() {
                Some((Token::Close, _)) => {
                    self.next += 1;
                    Ok(inner)
                }
                _ => Err(self.error_here("`)`")),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Query, QueryError> {
        let field = match self.peek() {
            Some((Token::Word(name), column)) => {
                let field = Field::parse(name).ok_or_else(|| QueryError {
                    column,
                    message: format!("unknown field `{name}`: fields are {FIELDS}"),
                })?;
                self.next += 1;
                field
            }
            _ => return Err(self.error_here(&format!("a field ({FIELDS})"))),
        };
        let op = match self.peek() {
            Some((Token::Op(op), _)) => {
                let op = *op;
                self.next += 1;
                op
            }
            _ => return Err(self.error_here("=, != or ~")),
        };
        match self.peek() {
            Some((Token::Str(value), _)) => {
                let value = value.clone();
                self.next += 1;
                Ok(Query::Compare(field, op, value))
            }
            _ => Err(self.error_here("a string in double quotes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi_in_the_lab() -> (Inventory, BTreeMap<String, String>) {
        let mut inventory = Inventory {
            board: Some("Raspberry Pi 5 Model B Rev 1.0".into()),
            os: Some("Debian GNU/Linux 12 (bookworm)".into()),
            os_version: Some("12".into()),
            kernel: Some("6.6.31+rpt-rpi-2712".into()),
            addresses: vec!["10.0.4.17".into(), "fd00::17".into()],
            ..Inventory::default()
        };
        inventory.tags.insert("site".into(), "warehouse".into());
        inventory.tags.insert("arm".into(), "so-100".into());
        // The operator moved it to the lab: the server's tag wins over the robot's.
        let operator_tags = BTreeMap::from([("site".to_string(), "lab".to_string())]);
        (inventory, operator_tags)
    }

    #[test]
    fn queries_match_inventory_and_tags() {
        let (inventory, tags) = pi_in_the_lab();
        let facts = Facts {
            id: "robot-007",
            compatible: "lekiwi-rpi5",
            version: Some("2.1.0"),
            state: "idle",
            inventory: Some(&inventory),
            tags: &tags,
        };
        let no_tags = BTreeMap::new();
        let bare = Facts {
            id: "robot-008",
            compatible: "lekiwi-rpi5",
            version: None,
            state: "idle",
            inventory: None,
            tags: &no_tags,
        };
        // (query, matches the Pi in the lab, matches a robot that reported nothing)
        for (query, pi, nothing) in [
            (
                r#"board ~ "Raspberry Pi 5" and tag.site = "lab""#,
                true,
                false,
            ),
            (r#"board ~ "raspberry pi 5""#, true, false),
            (r#"board = "Raspberry Pi 5""#, false, false),
            (r#"tag.site = "warehouse""#, false, false),
            (r#"tag.site != "lab""#, false, true),
            (r#"tag.arm = "so-100""#, true, false),
            (r#"not tag.arm = "so-100""#, false, true),
            (r#"os_version = "12" or kernel ~ "rpi""#, true, false),
            (r#"address = "10.0.4.17""#, true, false),
            (r#"address ~ "fd00:""#, true, false),
            (r#"version = "2.1.0""#, true, false),
            (
                r#"compatible = "lekiwi-rpi5" and not (id = "robot-007")"#,
                false,
                true,
            ),
            (
                r#"id = "robot-008" or id = "robot-007" and state = "busy""#,
                false,
                true,
            ),
            (
                r#"(id = "robot-008" or id = "robot-007") and state = "idle""#,
                true,
                true,
            ),
            (r#"NOT board ~ "" AND state = "idle""#, false, true),
            (r#"os ~ "bookworm" oR os ~ "trixie""#, true, false),
            (r#"tag.site = "say \"hi\"" or tag.x = "a\\b""#, false, false),
        ] {
            let parsed = Query::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
            assert_eq!(parsed.matches(&facts), pi, "{query} on the Pi");
            assert_eq!(parsed.matches(&bare), nothing, "{query} on a bare robot");
        }
    }

    #[test]
    fn bad_queries_name_the_column() {
        for (query, column, says) in [
            ("", 1, "expected a field"),
            ("board", 6, "expected =, != or ~"),
            ("board ~", 8, "expected a string in double quotes"),
            ("board ~ Pi", 9, "found `Pi`"),
            (r#"board ~ "Pi"#, 9, "no closing quote"),
            (r#"bored = "x""#, 1, "unknown field `bored`"),
            (r#"tag. = "x""#, 1, "unknown field `tag.`"),
            (r#"board = "x" and"#, 16, "found the end of the query"),
            (r#"board = "x" nand os = "y""#, 13, "unexpected `nand`"),
            (r#"(board = "x""#, 13, "expected `)`"),
            (r#"board = "x")"#, 12, "unexpected `)`"),
            (r#"board == "x""#, 8, "found `=`"),
            (r#"board = 'x'"#, 9, "strings need double quotes"),
            (r#"kernel ~ "6" & os = "x""#, 14, "unexpected character '&'"),
            (r#"os = "a\nb""#, 8, "unknown escape \\n"),
            (r#"os = "Zürich" and !"#, 19, "unexpected character '!'"),
        ] {
            let error = Query::parse(query).expect_err(query);
            assert_eq!(error.column, column, "{query}: {error}");
            assert!(error.message.contains(says), "{query}: {error}");
        }
        let deep = format!("{}id = \"x\"{}", "(".repeat(600), ")".repeat(600));
        let error = Query::parse(&deep).unwrap_err();
        assert_eq!(error.column, MAX_QUERY_CHARS + 1, "{error}");
        let nested = format!("{}id = \"x\"{}", "(".repeat(400), ")".repeat(400));
        assert!(Query::parse(&nested).is_ok());
    }
}
