//! CEL over a token's claims: an issuer's `claimValidationRules` and a
//! credential's `federation.condition` (SPEC §9).
//!
//! The implementation is the `cel` crate (cel-rust, the maintained
//! successor of `cel-interpreter`, which is frozen at 0.10 and points to
//! it). It parses, expands the standard macros (`has`, `all`, `exists`,
//! `exists_one`, `map`, `filter`) and interprets; the `strings` extension
//! Kubernetes also enables (`lowerAscii`, `split`, `replace`, …) is added.
//! It has no static type checker, so where the apiserver's cel-go refuses a
//! type error at admission, here it is an evaluation error — which refuses
//! the token, never accepts it.
//!
//! As in the apiserver's structured authentication configuration the
//! variable is `claims`, a map of the token's payload: `claims.sub`,
//! `has(claims.repository_owner)`, `claims["https://example.com/tenant"]`.
//! A rule that is not a `bool`, or errors (a missing claim, a type
//! mismatch), fails.
//!
//! Compiled once per spec change ([`ClaimRule::compile`]). Cost is bounded
//! before anything runs: at most [`MAX_EXPRESSION_LENGTH`] characters
//! (hence a bounded number of nodes), parser recursion at most
//! [`MAX_NESTING`], and no comprehension inside another, so one evaluation
//! is linear in the size of the claims (a token is at most 8 KiB): at most
//! nodes × claim elements steps. Only `claims` and the comprehension
//! variables may be named; an expression that names nothing of the token
//! (`true`, `1 == 1`) is refused as a mistake, as it would accept every token.

use crate::crd::MAX_EXPRESSION_LENGTH;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, Value};
use std::sync::{Arc, LazyLock};

/// The variable the claims are bound to.
pub const CLAIMS: &str = "claims";
/// Deepest parser recursion accepted.
pub const MAX_NESTING: u16 = 32;

/// Identifiers CEL resolves to types, which an expression may name.
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // The strings extension, as Kubernetes enables it; registering it on a
    // fresh standard environment cannot conflict.
    let _ = env.add_extension(cel::extensions::strings);
    Arc::new(env)
});

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Longer than [`MAX_EXPRESSION_LENGTH`].
    #[error("expression is {0} characters long, more than the limit of {MAX_EXPRESSION_LENGTH}")]
    TooLong(usize),
    /// The parser refused it (its message).
    #[error("compiling: {0}")]
    Syntax(String),
    /// It names a variable other than `claims`.
    #[error("undeclared reference to '{0}' (the only variable is 'claims')")]
    UndeclaredReference(String),
    /// It names nothing of the token.
    #[error("expression does not reference 'claims': it would hold for every token")]
    NoReference,
    /// A comprehension inside another: cost not linear in the claims.
    #[error(
        "nested comprehensions (a macro such as all/exists/map/filter inside another) are not allowed: they make the cost quadratic in the token's claims"
    )]
    TooCostly,
}

/// One compiled expression over `claims`.
pub struct ClaimRule {
    source: String,
    program: cel::Program,
}

impl std::fmt::Debug for ClaimRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClaimRule").field(&self.source).finish()
    }
}

impl PartialEq for ClaimRule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl ClaimRule {
    /// Compile `source` and check its cost and references.
    pub fn compile(source: &str) -> Result<Self, RuleError> {
        let length = source.chars().count();
        if length > MAX_EXPRESSION_LENGTH {
            return Err(RuleError::TooLong(length));
        }
        let parser = ENV.parser().max_recursion_depth(MAX_NESTING);
        let expression = parser
            .parse(source)
            .map_err(|e| RuleError::Syntax(e.to_string()))?;
        let mut check = Check::default();
        check.walk(&expression, &mut Vec::new(), 0)?;
        if !check.references_claims {
            return Err(RuleError::NoReference);
        }
        // Compile for execution (the same parse, kept by the program).
        let program = ENV
            .compile(source)
            .map_err(|e| RuleError::Syntax(e.to_string()))?;
        Ok(Self {
            source: source.to_owned(),
            program,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate against `claims`: `Ok(true)` only for the boolean `true`;
    /// `Err` with the evaluation error (a missing claim, a wrong type, a
    /// result that is not a `bool`).
    pub fn holds(&self, claims: &Claims) -> Result<bool, String> {
        let mut context = Context::with_env(ENV.clone());
        context.add_variable_from_value(CLAIMS, claims.0.clone());
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "evaluates to {:?}, not a bool",
                other.type_of().to_string()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A token's claims as a CEL value (converted once per verified token).
#[derive(Clone)]
pub struct Claims(Value);

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Claims(..)")
    }
}

impl Claims {
    /// Convert a JSON payload; `None` if it is not an object.
    pub fn from_json(payload: &serde_json::Value) -> Option<Self> {
        if !payload.is_object() {
            return None;
        }
        cel::to_value(payload).ok().map(Self)
    }
}

/// The AST walk of [`ClaimRule::compile`].
#[derive(Default)]
struct Check {
    references_claims: bool,
}

impl Check {
    fn walk(
        &mut self,
        e: &IdedExpr,
        bound: &mut Vec<String>,
        comprehensions: u32,
    ) -> Result<(), RuleError> {
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if name == CLAIMS && !bound.iter().any(|b| b == CLAIMS) {
                    self.references_claims = true;
                    Ok(())
                } else if bound.iter().any(|b| b == name) || TYPE_NAMES.contains(&name.as_str()) {
                    Ok(())
                } else {
                    Err(RuleError::UndeclaredReference(name.clone()))
                }
            }
            Expr::Select(s) => self.walk(&s.operand, bound, comprehensions),
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.walk(t, bound, comprehensions)?;
                }
                c.args
                    .iter()
                    .try_for_each(|a| self.walk(a, bound, comprehensions))
            }
            Expr::List(l) => l
                .elements
                .iter()
                .try_for_each(|a| self.walk(a, bound, comprehensions)),
            Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    self.walk(&me.key, bound, comprehensions)?;
                    self.walk(&me.value, bound, comprehensions)
                }
                EntryExpr::StructField(f) => self.walk(&f.value, bound, comprehensions),
            }),
            Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => {
                    self.walk(&me.key, bound, comprehensions)?;
                    self.walk(&me.value, bound, comprehensions)
                }
                EntryExpr::StructField(f) => self.walk(&f.value, bound, comprehensions),
            }),
            Expr::Comprehension(c) => {
                if comprehensions >= 1 {
                    return Err(RuleError::TooCostly);
                }
                self.walk(&c.iter_range, bound, comprehensions)?;
                self.walk(&c.accu_init, bound, comprehensions)?;
                let before = bound.len();
                bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    bound.push(v.clone());
                }
                bound.push(c.accu_var.clone());
                let inner = comprehensions + 1;
                let result = self
                    .walk(&c.loop_cond, bound, inner)
                    .and_then(|()| self.walk(&c.loop_step, bound, inner))
                    .and_then(|()| self.walk(&c.result, bound, inner));
                bound.truncate(before);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: serde_json::Value) -> Claims {
        Claims::from_json(&json).unwrap()
    }

    fn gha() -> Claims {
        claims(serde_json::json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "environment": "production",
            "groups": ["a", "b"],
            "https://example.com/tenant": "t1",
        }))
    }

    #[test]
    fn rules_evaluate_like_the_apiservers() {
        let c = gha();
        let table = [
            (r#"claims.repository_owner == "acme""#, Ok(true)),
            (r#"claims.repository_owner == "evil""#, Ok(false)),
            (r#"claims.repository.startsWith("acme/")"#, Ok(true)),
            (
                r#"has(claims.environment) && claims.environment == "production""#,
                Ok(true),
            ),
            (r#"has(claims.job_workflow_ref)"#, Ok(false)),
            (r#"claims.groups.exists(g, g == "b")"#, Ok(true)),
            (r#"claims["https://example.com/tenant"] == "t1""#, Ok(true)),
            (r#"claims.ref.lowerAscii() == "refs/heads/main""#, Ok(true)),
            (
                r#"claims.sub.matches("^repo:acme/[a-z]+:ref:refs/heads/main$")"#,
                Ok(true),
            ),
        ];
        for (expr, want) in table {
            let rule = ClaimRule::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(rule.holds(&c), want, "{expr}");
        }
        // A missing claim and a non-bool are errors (the token is refused).
        for expr in [r#"claims.job_workflow_ref == "x""#, "claims.repository"] {
            let rule = ClaimRule::compile(expr).unwrap();
            assert!(rule.holds(&c).is_err(), "{expr}");
        }
    }

    #[test]
    fn bad_expressions_are_refused_with_the_reason() {
        assert!(matches!(
            ClaimRule::compile("claims.sub =="),
            Err(RuleError::Syntax(_))
        ));
        assert_eq!(ClaimRule::compile("true"), Err(RuleError::NoReference));
        assert_eq!(ClaimRule::compile("1 == 1"), Err(RuleError::NoReference));
        assert_eq!(
            ClaimRule::compile("request.sub == 'x'"),
            Err(RuleError::UndeclaredReference("request".into()))
        );
        assert_eq!(
            ClaimRule::compile("claims.groups.all(a, claims.groups.exists(b, a == b))"),
            Err(RuleError::TooCostly)
        );
        let long = format!("claims.sub == '{}'", "a".repeat(MAX_EXPRESSION_LENGTH));
        assert!(matches!(
            ClaimRule::compile(&long),
            Err(RuleError::TooLong(_))
        ));
        // Comprehension variables and type names are fine.
        ClaimRule::compile("claims.groups.all(g, type(g) == string)").unwrap();
    }
}
