//! SQL text handling: literal masking ([`sanitize`]) and low-cardinality
//! summaries ([`summarize`]). Pure functions over `&str`.
//!
//! Guarantees:
//! - [`sanitize`] never lets a literal through: every string (any quoting
//!   flavour, dollar quotes included) and every number becomes `?`, comments
//!   are dropped (they may hold anything), and an unterminated string or
//!   comment masks everything up to the end. Identifiers (`t1`, `"Quoted"`),
//!   keywords (`TRUE`, `NULL`) and `$n` placeholders are kept.
//! - Neither function panics, on any input.

use super::lexer::{Lexer, Tok, Token};

/// Masks literal values in `sql` with `?`, drops comments, collapses
/// whitespace to single spaces, and collapses `IN (?, ?, ...)` to `IN (?)`.
pub fn sanitize(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(4096));
    // Last two significant (non-space) tokens emitted, newest first.
    let mut prev: [Option<Tok>; 2] = [None, None];
    let mut prev_text: &str = "";
    let mut pending_space = false;
    // Where an `IN (` list began in `out`, and whether it held only `?`s so far.
    let mut in_list: Option<(usize, bool)> = None;
    for tok in Lexer::new(sql) {
        let text = match tok.kind {
            Tok::Space | Tok::Comment => {
                pending_space = !out.is_empty();
                continue;
            }
            Tok::Str | Tok::Num => {
                let unary_minus = tok.kind == Tok::Num
                    && prev[0] == Some(Tok::Punct)
                    && prev_text == "-"
                    && !matches!(prev[1], Some(Tok::Ident | Tok::QIdent | Tok::Num | Tok::Str | Tok::Param));
                if unary_minus && out.ends_with('-') {
                    out.pop();
                    pending_space = false;
                }
                "?"
            }
            _ => tok.text,
        };
        // IN-list collapsing.
        in_list = match (in_list, tok.kind, text) {
            (Some((at, any)), _, ")") if any => {
                out.truncate(at);
                out.push_str("(?)");
                prev = [Some(Tok::Punct), prev[0]];
                prev_text = ")";
                pending_space = false;
                continue;
            }
            (Some((at, _)), Tok::Str | Tok::Num, _) => Some((at, true)),
            (Some(state), Tok::Punct, ",") => Some(state),
            (None, Tok::Punct, "(") if prev[0] == Some(Tok::Ident) && prev_text.eq_ignore_ascii_case("in") => {
                Some((out.len() + usize::from(pending_space), false))
            }
            _ => None,
        };
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push_str(text);
        prev = [Some(tok.kind), prev[0]];
        prev_text = text;
    }
    out
}

/// Operation and main collection of the first statement in `sql`:
/// `("SELECT", Some("public.users"))`, `("INSERT", Some("t"))`,
/// `("CREATE TABLE", Some("t"))`, `("BEGIN", None)`. The operation is
/// upper-cased; for `WITH ...` it is the main statement's operation.
/// Returns `(None, None)` for empty or comment-only text.
pub fn summarize(sql: &str) -> (Option<String>, Option<String>) {
    let toks: Vec<Token<'_>> =
        Lexer::new(sql).filter(|t| !matches!(t.kind, Tok::Space | Tok::Comment)).take(512).collect();
    let mut c = Cursor { toks: &toks, i: 0 };
    // Leading parentheses: `(SELECT ...) UNION ...`.
    while c.punct("(") {}
    let Some(first) = c.ident() else {
        return (None, None);
    };
    let mut op = first.to_ascii_uppercase();
    if op == "WITH" {
        match main_statement_after_with(&mut c) {
            Some(main) => op = main.to_ascii_uppercase(),
            None => return (Some(op), None),
        }
    }
    let collection = match op.as_str() {
        "SELECT" => c.find_depth0_keyword("FROM").and_then(|_| c.table_name()),
        "DELETE" => c.keyword("FROM").then(|| c.table_name()).flatten(),
        "INSERT" | "MERGE" => c.keyword("INTO").then(|| c.table_name()).flatten(),
        "UPDATE" | "COPY" | "LOCK" => c.table_name(),
        "TRUNCATE" => {
            c.keyword("TABLE");
            c.table_name()
        }
        "CREATE" | "ALTER" | "DROP" => {
            let (object, name) = ddl_object(&mut c);
            if let Some(object) = object {
                op = format!("{op} {object}");
            }
            name
        }
        _ => None,
    };
    (Some(op), collection)
}

/// `db.query.summary` text: `"{op} {collection}"`, or `"{op}"`.
pub fn summary_text(op: Option<&str>, collection: Option<&str>) -> Option<String> {
    match (op, collection) {
        (Some(op), Some(coll)) => Some(format!("{op} {coll}")),
        (Some(op), None) => Some(op.to_owned()),
        (None, _) => None,
    }
}

struct Cursor<'t, 'a> {
    toks: &'t [Token<'a>],
    i: usize,
}

impl<'a> Cursor<'_, 'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.toks.get(self.i).copied()
    }

    fn punct(&mut self, p: &str) -> bool {
        let hit = self.peek().is_some_and(|t| t.kind == Tok::Punct && t.text == p);
        self.i += usize::from(hit);
        hit
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let hit = self.peek().is_some_and(|t| t.kind == Tok::Ident && t.text.eq_ignore_ascii_case(kw));
        self.i += usize::from(hit);
        hit
    }

    fn ident(&mut self) -> Option<&'a str> {
        let t = self.peek().filter(|t| t.kind == Tok::Ident)?;
        self.i += 1;
        Some(t.text)
    }

    /// Advances past the next `kw` at parenthesis depth 0 of the current
    /// statement; false (cursor at the end) if there is none.
    fn find_depth0_keyword(&mut self, kw: &str) -> Option<()> {
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            self.i += 1;
            match (t.kind, t.text) {
                (Tok::Punct, "(") => depth += 1,
                (Tok::Punct, ")") => depth = depth.saturating_sub(1),
                (Tok::Punct, ";") if depth == 0 => return None,
                (Tok::Ident, w) if depth == 0 && w.eq_ignore_ascii_case(kw) => return Some(()),
                _ => {}
            }
        }
        None
    }

    /// A possibly schema-qualified name; quotes removed from each part.
    fn table_name(&mut self) -> Option<String> {
        self.keyword("ONLY");
        let mut name = String::new();
        loop {
            let t = self.peek().filter(|t| matches!(t.kind, Tok::Ident | Tok::QIdent))?;
            self.i += 1;
            if t.kind == Tok::QIdent {
                name.push_str(&unquote_ident(t.text));
            } else {
                name.push_str(t.text);
            }
            if !self.punct(".") {
                break;
            }
            name.push('.');
        }
        (!name.is_empty()).then_some(name)
    }
}

/// Skips a `WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (...) , ...`
/// list and returns the keyword of the main statement.
fn main_statement_after_with<'a>(c: &mut Cursor<'_, 'a>) -> Option<&'a str> {
    let mut depth = 0usize;
    while let Some(t) = c.peek() {
        c.i += 1;
        match (t.kind, t.text) {
            (Tok::Punct, "(") => depth += 1,
            (Tok::Punct, ")") => depth = depth.saturating_sub(1),
            (Tok::Punct, ";") if depth == 0 => return None,
            (Tok::Ident, w)
                if depth == 0
                    && ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"].iter().any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                return Some(w);
            }
            _ => {}
        }
    }
    None
}

/// `CREATE [OR REPLACE] [TEMP|UNIQUE|...] <OBJECT> [IF [NOT] EXISTS] <name>`:
/// the object type (upper-case) and, for tables, views and indexes, the name.
fn ddl_object(c: &mut Cursor<'_, '_>) -> (Option<String>, Option<String>) {
    const MODIFIERS: [&str; 9] =
        ["OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED", "UNIQUE", "GLOBAL", "LOCAL", "MATERIALIZED"];
    while MODIFIERS.iter().any(|m| c.keyword(m)) {}
    let Some(object) = c.ident().map(str::to_ascii_uppercase) else {
        return (None, None);
    };
    let named = matches!(object.as_str(), "TABLE" | "VIEW" | "INDEX" | "SEQUENCE");
    if !named {
        return (Some(object), None);
    }
    c.keyword("CONCURRENTLY");
    if c.keyword("IF") {
        c.keyword("NOT");
        c.keyword("EXISTS");
    }
    (Some(object), c.table_name())
}

/// `"My ""T"""` -> `My "T"`.
fn unquote_ident(q: &str) -> String {
    let inner = q.strip_prefix("U&").or_else(|| q.strip_prefix("u&")).unwrap_or(q);
    let inner = inner.strip_prefix('"').unwrap_or(inner);
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    inner.replace("\"\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(sql: &str) -> (Option<&'static str>, Option<String>) {
        let (op, coll) = summarize(sql);
        (op.map(|o| &*o.leak()), coll)
    }

    #[test]
    fn sanitize_masks_strings_and_numbers() {
        assert_eq!(sanitize("SELECT * FROM t WHERE a = 'x' AND b = 42"), "SELECT * FROM t WHERE a = ? AND b = ?");
        assert_eq!(sanitize("INSERT INTO t VALUES ('it''s', 1.5e10, .5, 0xFF)"), "INSERT INTO t VALUES (?, ?, ?, ?)");
    }

    #[test]
    fn sanitize_masks_escape_dollar_bit_and_unicode_strings() {
        assert_eq!(
            sanitize(r"SELECT E'a\'b', $$x$$, $fn$ y $fn$, B'01', X'1F', U&'d\0061t', N'n'"),
            "SELECT ?, ?, ?, ?, ?, ?, ?"
        );
    }

    #[test]
    fn sanitize_keeps_identifiers_keywords_and_placeholders() {
        assert_eq!(
            sanitize("UPDATE \"My T\" SET c1 = $1, flag = TRUE WHERE t1.id = $2 AND x IS NULL"),
            "UPDATE \"My T\" SET c1 = $1, flag = TRUE WHERE t1.id = $2 AND x IS NULL"
        );
    }

    #[test]
    fn sanitize_folds_unary_minus_but_not_subtraction() {
        assert_eq!(sanitize("SELECT a - 1, b = -2, f(-3.5) FROM t"), "SELECT a - ?, b = ?, f(?) FROM t");
    }

    #[test]
    fn sanitize_masks_unterminated_quotes_to_the_end() {
        assert_eq!(sanitize("SELECT 'secret AND more"), "SELECT ?");
        assert_eq!(sanitize("SELECT $x$ secret"), "SELECT ?");
        assert_eq!(sanitize("SELECT E'sec\\'ret"), "SELECT ?");
    }

    #[test]
    fn sanitize_drops_comments() {
        assert_eq!(sanitize("SELECT 1 -- user='bob'\n/* traceparent='00-ab' */ FROM t"), "SELECT ? FROM t");
        assert_eq!(sanitize("SELECT 1 /* open 'x"), "SELECT ?");
    }

    #[test]
    fn sanitize_collapses_in_lists_and_whitespace() {
        assert_eq!(
            sanitize("SELECT *\n  FROM t WHERE id IN (1, 2,\t3) AND s in('a','b')"),
            "SELECT * FROM t WHERE id IN (?) AND s in(?)"
        );
        assert_eq!(sanitize("SELECT * FROM t WHERE id IN ($1, $2)"), "SELECT * FROM t WHERE id IN ($1, $2)");
        assert_eq!(sanitize("SELECT * FROM t WHERE id IN (SELECT 1)"), "SELECT * FROM t WHERE id IN (SELECT ?)");
    }

    #[test]
    fn sanitize_leaves_no_literal_behind() {
        let secrets = ["hunter2", "4111111111111111", "a@b.c", "s3cr3t"];
        let sqls = [
            "INSERT INTO u(email, pw) VALUES ('a@b.c', 'hunter2')",
            "SELECT * FROM cards WHERE pan = 4111111111111111",
            "SELECT $tag$s3cr3t$tag$",
            "SELECT e'hunter2\\'' || 's3cr3t'",
            "UPDATE u SET pw = 'hunter2",
            "SELECT 1 -- hunter2",
            "SELECT U&'a@b.c' UESCAPE '!'",
        ];
        for sql in sqls {
            let s = sanitize(sql);
            for secret in secrets {
                assert!(!s.contains(secret), "{sql:?} -> {s:?} leaks {secret}");
            }
        }
    }

    #[test]
    fn sanitize_keeps_digits_inside_identifiers() {
        assert_eq!(
            sanitize("SELECT t1.c2 FROM t1 JOIN s2x ON t1.a=s2x.a"),
            "SELECT t1.c2 FROM t1 JOIN s2x ON t1.a=s2x.a"
        );
    }

    #[test]
    fn sanitize_handles_casts_and_empty_input() {
        assert_eq!(sanitize("SELECT '2020-01-01'::date, DATE '2020-01-01'"), "SELECT ?::date, DATE ?");
        assert_eq!(sanitize(""), "");
        assert_eq!(sanitize("  -- only a comment"), "");
    }

    #[test]
    fn summarize_finds_operation_and_table() {
        assert_eq!(sum("SELECT a FROM public.users WHERE id = 1"), (Some("SELECT"), Some("public.users".into())));
        assert_eq!(sum("insert into t (a) values (1)"), (Some("INSERT"), Some("t".into())));
        assert_eq!(sum("UPDATE ONLY \"Acc\" SET x = 1"), (Some("UPDATE"), Some("Acc".into())));
        assert_eq!(sum("DELETE FROM \"s\".\"t\" WHERE 1=1"), (Some("DELETE"), Some("s.t".into())));
        assert_eq!(sum("COPY pgbench_accounts FROM STDIN"), (Some("COPY"), Some("pgbench_accounts".into())));
        assert_eq!(sum("COPY (SELECT 1) TO STDOUT"), (Some("COPY"), None));
    }

    #[test]
    fn summarize_skips_subqueries_in_select_list() {
        assert_eq!(
            sum("SELECT (SELECT max(x) FROM a), extract(year FROM d) FROM b"),
            (Some("SELECT"), Some("b".into()))
        );
        assert_eq!(sum("SELECT 1"), (Some("SELECT"), None));
        assert_eq!(sum("SELECT * FROM (SELECT 1) s"), (Some("SELECT"), None));
    }

    #[test]
    fn summarize_uses_the_main_statement_of_a_cte() {
        assert_eq!(sum("WITH x AS (SELECT * FROM a) DELETE FROM b USING x"), (Some("DELETE"), Some("b".into())));
        assert_eq!(
            sum("WITH RECURSIVE r(n) AS (SELECT 1 UNION SELECT n+1 FROM r) SELECT n FROM r"),
            (Some("SELECT"), Some("r".into()))
        );
    }

    #[test]
    fn summarize_names_ddl_objects() {
        assert_eq!(sum("CREATE TABLE IF NOT EXISTS t (a int)"), (Some("CREATE TABLE"), Some("t".into())));
        assert_eq!(sum("create unique index concurrently i on t(a)"), (Some("CREATE INDEX"), Some("i".into())));
        assert_eq!(sum("DROP TABLE IF EXISTS s.t"), (Some("DROP TABLE"), Some("s.t".into())));
        assert_eq!(sum("CREATE OR REPLACE FUNCTION f() ..."), (Some("CREATE FUNCTION"), None));
    }

    #[test]
    fn summarize_uses_the_first_statement_and_plain_keywords() {
        assert_eq!(sum("BEGIN; UPDATE t SET a = 1; COMMIT"), (Some("BEGIN"), None));
        assert_eq!(sum("/* c */ (SELECT 1 FROM t) UNION (SELECT 2)"), (Some("SELECT"), Some("t".into())));
        assert_eq!(sum("SELECT 1; SELECT 2 FROM t"), (Some("SELECT"), None));
        assert_eq!(sum("listen ch"), (Some("LISTEN"), None));
        assert_eq!(sum("   "), (None, None));
        assert_eq!(sum("'x'"), (None, None));
    }

    #[test]
    fn summary_text_joins_parts() {
        assert_eq!(summary_text(Some("SELECT"), Some("t")).as_deref(), Some("SELECT t"));
        assert_eq!(summary_text(Some("BEGIN"), None).as_deref(), Some("BEGIN"));
        assert_eq!(summary_text(None, Some("t")), None);
    }
}
