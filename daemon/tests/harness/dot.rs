//! A syntax check of Graphviz DOT, for tests of `arroyoctl explain --dot` where `dot` itself
//! is not installed. It follows the grammar of graphviz.org/doc/info/lang.html: a (strict)
//! graph or digraph, statements (node, edge, attribute, `ID = ID`, subgraphs), attribute
//! lists, ports; IDs as names, numerals and double-quoted strings (HTML strings are not
//! accepted). It returns what it read so that a test can also check the content.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Id(String),
    Punct(&'static str),
}

/// What a valid graph holds.
#[derive(Debug, Default)]
pub struct Graph {
    pub directed: bool,
    pub nodes: BTreeSet<String>,
    /// (from, to, the edge's attributes as `key=value`).
    pub edges: Vec<(String, String, Vec<String>)>,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at_line_start = |i: usize| i == 0 || chars[i - 1] == '\n';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' && at_line_start(i) || chars[i..].starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if chars[i..].starts_with(&['/', '*']) {
            let end = (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                .ok_or("an unterminated comment")?;
            i = end + 2;
        } else if chars[i..].starts_with(&['-', '>']) || chars[i..].starts_with(&['-', '-']) {
            out.push(Token::Punct(if chars[i + 1] == '>' { "->" } else { "--" }));
            i += 2;
        } else if let Some(p) = ["{", "}", "[", "]", "=", ";", ",", ":"]
            .into_iter()
            .find(|p| p.starts_with(c))
        {
            out.push(Token::Punct(p));
            i += 1;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("an unterminated string".into()),
                    Some('"') => break,
                    Some('\\') if chars.get(i + 1) == Some(&'"') => {
                        s.push('"');
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push(Token::Id(s));
        } else if c.is_ascii_digit() || c == '-' || c == '.' {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let n: String = chars[start..i].iter().collect();
            if n.matches('.').count() > 1 || n == "-" || n == "." {
                return Err(format!("a bad numeral {n:?}"));
            }
            out.push(Token::Id(n));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Id(chars[start..i].iter().collect()));
        } else {
            return Err(format!("an unexpected character {c:?}"));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    graph: Graph,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn punct(&mut self, p: &str) -> bool {
        let here = matches!(self.peek(), Some(Token::Punct(q)) if *q == p);
        if here {
            self.at += 1;
        }
        here
    }

    fn expect(&mut self, p: &str) -> Result<(), String> {
        if self.punct(p) {
            Ok(())
        } else {
            Err(format!(
                "expected {p:?} at token {}, found {:?}",
                self.at,
                self.peek()
            ))
        }
    }

    fn keyword(&mut self, k: &str) -> bool {
        let here = matches!(self.peek(), Some(Token::Id(s)) if s.eq_ignore_ascii_case(k));
        if here {
            self.at += 1;
        }
        here
    }

    fn id(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Id(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            other => Err(format!(
                "expected an ID at token {}, found {other:?}",
                self.at
            )),
        }
    }

    /// `[a=b, c=d][...]`: the pairs.
    fn attr_lists(&mut self) -> Result<Vec<String>, String> {
        let mut pairs = Vec::new();
        while self.punct("[") {
            while !self.punct("]") {
                let key = self.id()?;
                self.expect("=")?;
                let value = self.id()?;
                pairs.push(format!("{key}={value}"));
                let _ = self.punct(";") || self.punct(",");
            }
        }
        Ok(pairs)
    }

    /// A node id with an optional port, or a subgraph; the node's name (None: a subgraph).
    fn operand(&mut self) -> Result<Option<String>, String> {
        if self.keyword("subgraph") || matches!(self.peek(), Some(Token::Punct("{"))) {
            if matches!(self.peek(), Some(Token::Id(_))) {
                self.id()?;
            }
            self.expect("{")?;
            self.statements()?;
            self.expect("}")?;
            return Ok(None);
        }
        let name = self.id()?;
        if self.punct(":") {
            self.id()?;
            if self.punct(":") {
                self.id()?;
            }
        }
        self.graph.nodes.insert(name.clone());
        Ok(Some(name))
    }

    fn statements(&mut self) -> Result<(), String> {
        while !matches!(self.peek(), Some(Token::Punct("}")) | None) {
            if self.keyword("graph") || self.keyword("node") || self.keyword("edge") {
                if !matches!(self.peek(), Some(Token::Punct("["))) {
                    return Err(format!("an attribute statement without [ at {}", self.at));
                }
                self.attr_lists()?;
            } else if matches!(self.tokens.get(self.at + 1), Some(Token::Punct("=")))
                && matches!(self.peek(), Some(Token::Id(_)))
            {
                self.id()?;
                self.expect("=")?;
                self.id()?;
            } else {
                let mut from = self.operand()?;
                let mut chain = Vec::new();
                loop {
                    let op = if self.graph.directed { "->" } else { "--" };
                    if self.punct(op) {
                        let to = self.operand()?;
                        chain.push((from.clone(), to.clone()));
                        from = to;
                    } else if self.punct(if self.graph.directed { "--" } else { "->" }) {
                        return Err(format!("the wrong edge operator at {}", self.at));
                    } else {
                        break;
                    }
                }
                let attrs = self.attr_lists()?;
                for (a, b) in chain {
                    if let (Some(a), Some(b)) = (a, b) {
                        self.graph.edges.push((a, b, attrs.clone()));
                    }
                }
            }
            let _ = self.punct(";");
        }
        Ok(())
    }
}

/// Parses `text` as one DOT graph; Err says where it is not.
pub fn parse(text: &str) -> Result<Graph, String> {
    let mut p = Parser {
        tokens: tokens(text)?,
        at: 0,
        graph: Graph::default(),
    };
    p.keyword("strict");
    p.graph.directed = if p.keyword("digraph") {
        true
    } else if p.keyword("graph") {
        false
    } else {
        return Err("expected graph or digraph".into());
    };
    if matches!(p.peek(), Some(Token::Id(_))) {
        p.id()?;
    }
    p.expect("{")?;
    p.statements()?;
    p.expect("}")?;
    if p.at != p.tokens.len() {
        return Err(format!("text after the graph at token {}", p.at));
    }
    Ok(p.graph)
}
