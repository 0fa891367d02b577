//! Label selectors in Calico's syntax, used by pools, peers and (later) policies.
//!
//! ```text
//! all()                         every resource
//! has(zone)  !has(zone)         the label is present / absent
//! zone == "a"   zone != 'a'     equality
//! zone in {"a", "b"}            membership (also `not in`)
//! name contains "x"             substring (also `starts with`, `ends with`)
//! a == "1" && (b == "2" || !c == "3")
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use nom::branch::alt;
use nom::bytes::complete::{is_not, tag, take_while1};
use nom::character::complete::{char, multispace0};
use nom::combinator::{all_consuming, map, value};
use nom::multi::separated_list0;
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    expr: Expr,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid selector: unexpected input at \"{rest}\"")]
pub struct SelectorError {
    rest: String,
}

impl Selector {
    /// Whether a resource with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.expr.matches(labels)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Expr {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str);
        match self {
            Expr::All => true,
            Expr::Has(k) => labels.contains_key(k),
            Expr::Eq(k, v) => get(k) == Some(v),
            Expr::Ne(k, v) => get(k) != Some(v),
            Expr::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Expr::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Expr::Contains(k, v) => get(k).is_some_and(|x| x.contains(v.as_str())),
            Expr::StartsWith(k, v) => get(k).is_some_and(|x| x.starts_with(v.as_str())),
            Expr::EndsWith(k, v) => get(k).is_some_and(|x| x.ends_with(v.as_str())),
            Expr::Not(e) => !e.matches(labels),
            Expr::And(a, b) => a.matches(labels) && b.matches(labels),
            Expr::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Selector { expr: Expr::All, source: "all()".into() });
        }
        match all_consuming(delimited(multispace0, or_expr, multispace0)).parse(s) {
            Ok((_, expr)) => Ok(Selector { expr, source: s.to_owned() }),
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
                Err(SelectorError { rest: e.input.chars().take(30).collect() })
            }
            Err(nom::Err::Incomplete(_)) => Err(SelectorError { rest: String::new() }),
        }
    }
}

fn ws<'a, O>(
    p: impl Parser<&'a str, Output = O, Error = nom::error::Error<&'a str>>,
) -> impl Parser<&'a str, Output = O, Error = nom::error::Error<&'a str>> {
    delimited(multispace0, p, multispace0)
}

fn key(i: &str) -> IResult<&str, String> {
    map(take_while1(|c: char| c.is_ascii_alphanumeric() || "_./-".contains(c)), str::to_owned).parse(i)
}

fn quoted(i: &str) -> IResult<&str, String> {
    let double = delimited(char('"'), map(nom::combinator::opt(is_not("\"")), Option::unwrap_or_default), char('"'));
    let single = delimited(char('\''), map(nom::combinator::opt(is_not("'")), Option::unwrap_or_default), char('\''));
    map(alt((double, single)), str::to_owned).parse(i)
}

fn set(i: &str) -> IResult<&str, Vec<String>> {
    delimited(ws(char('{')), separated_list0(ws(char(',')), quoted), ws(char('}'))).parse(i)
}

fn comparison(i: &str) -> IResult<&str, Expr> {
    let (i, k) = ws(key).parse(i)?;
    alt((
        map(preceded(ws(tag("==")), quoted), {
            let k = k.clone();
            move |v| Expr::Eq(k.clone(), v)
        }),
        map(preceded(ws(tag("!=")), quoted), {
            let k = k.clone();
            move |v| Expr::Ne(k.clone(), v)
        }),
        map(preceded((ws(tag("not")), ws(tag("in"))), set), {
            let k = k.clone();
            move |v| Expr::NotIn(k.clone(), v)
        }),
        map(preceded(ws(tag("in")), set), {
            let k = k.clone();
            move |v| Expr::In(k.clone(), v)
        }),
        map(preceded(ws(tag("contains")), quoted), {
            let k = k.clone();
            move |v| Expr::Contains(k.clone(), v)
        }),
        map(preceded((ws(tag("starts")), ws(tag("with"))), quoted), {
            let k = k.clone();
            move |v| Expr::StartsWith(k.clone(), v)
        }),
        map(preceded((ws(tag("ends")), ws(tag("with"))), quoted), move |v| Expr::EndsWith(k.clone(), v)),
    ))
    .parse(i)
}

fn primary(i: &str) -> IResult<&str, Expr> {
    ws(alt((
        value(Expr::All, (tag("all"), ws(char('(')), char(')'))),
        map(preceded(tag("has"), delimited(ws(char('(')), key, ws(char(')')))), Expr::Has),
        delimited(char('('), or_expr, ws(char(')'))),
        map(preceded(char('!'), primary), |e| Expr::Not(Box::new(e))),
        comparison,
    )))
    .parse(i)
}

fn and_expr(i: &str) -> IResult<&str, Expr> {
    let (mut i, mut left) = primary(i)?;
    while let Ok((rest, right)) = preceded(ws(tag("&&")), primary).parse(i) {
        left = Expr::And(Box::new(left), Box::new(right));
        i = rest;
    }
    Ok((i, left))
}

fn or_expr(i: &str) -> IResult<&str, Expr> {
    let (mut i, mut left) = and_expr(i)?;
    while let Ok((rest, right)) = preceded(ws(tag("||")), and_expr).parse(i) {
        left = Expr::Or(Box::new(left), Box::new(right));
        i = rest;
    }
    Ok((i, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_calico_forms_match_as_documented() {
        let l = labels(&[("zone", "eu-1"), ("kubernetes.io/os", "linux"), ("rack", "r7")]);
        for (s, want) in [
            ("all()", true),
            ("", true),
            ("has(zone)", true),
            ("!has(gpu)", true),
            ("zone == \"eu-1\"", true),
            ("zone != 'eu-1'", false),
            ("kubernetes.io/os == \"linux\"", true),
            ("zone in {\"us-1\", \"eu-1\"}", true),
            ("zone not in {\"eu-1\"}", false),
            ("gpu not in {\"a\"}", true),
            ("zone starts with \"eu\"", true),
            ("zone ends with \"-2\"", false),
            ("rack contains \"7\"", true),
            ("has(zone) && rack == \"r8\"", false),
            ("has(zone) && (rack == \"r8\" || rack == \"r7\")", true),
            ("rack == \"r8\" || has(zone) && !has(gpu)", true),
        ] {
            assert_eq!(sel(s).matches(&l), want, "{s}");
        }
    }

    #[test]
    fn garbage_is_rejected_with_the_place() {
        for bad in ["zone ==", "has(", "zone = \"a\"", "all() &&", "zone in {a}", "(a == \"b\""] {
            let err = bad.parse::<Selector>().unwrap_err();
            assert!(err.to_string().starts_with("not a valid selector"), "{bad}: {err}");
        }
    }
}
