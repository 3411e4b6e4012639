//! From minijinja's own parse of an expression to a [`Node`] tree, or `None` when the
//! expression uses something the native evaluator leaves to minijinja.
//!
//! Parsing with minijinja's parser (its `unstable_machinery` API, pinned by `Cargo.lock`)
//! keeps the syntax, precedence and literals exactly minijinja's; a minijinja upgrade that
//! changes that API fails to build here rather than changing behaviour.

use minijinja::Environment;
use minijinja::machinery::ast::{BinOpKind, CompareOpKind, Expr, UnaryOpKind};
use minijinja::value::{Value as TemplateValue, ValueKind};

use super::ops::Arith;
use super::{Cmp, Const, Node, Test};

/// More nodes than this and the expression stays with minijinja: together with
/// [`super::ops::BYTE_BUDGET`] it keeps a native evaluation far inside `template::FUEL`.
const MAX_NODES: usize = 1000;

/// The native tree of `source`, if every part of it has one.
pub fn build(env: &Environment<'_>, source: &str) -> Option<Node> {
    let expr = minijinja::machinery::parse_expr(source).ok()?;
    let mut builder = Builder { env, nodes: 0 };
    builder.expr(&expr)
}

struct Builder<'e, 'env> {
    env: &'e Environment<'env>,
    nodes: usize,
}

impl Builder<'_, '_> {
    fn expr(&mut self, expr: &Expr<'_>) -> Option<Node> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return None;
        }
        // minijinja folds every constant subtree before it compiles it; so does this.
        if let Some(value) = expr.as_const() {
            return constant(&value).map(Node::Const);
        }
        Some(match expr {
            Expr::Var(var) => match var.id {
                "device_id" => Node::DeviceId,
                // `meta` is the view's, not a field; globals (`range`, …) are functions.
                "meta" => return None,
                name if self.env.globals().any(|(global, _)| global == name) => return None,
                name => Node::Field(name.into()),
            },
            Expr::UnaryOp(op) => {
                let inner = Box::new(self.expr(&op.expr)?);
                match op.op {
                    UnaryOpKind::Not => Node::Not(inner),
                    UnaryOpKind::Neg => Node::Neg(inner),
                }
            }
            Expr::BinOp(op) => self.bin_op(op.op, &op.left, &op.right)?,
            Expr::Compare(chain) => {
                let first = Box::new(self.expr(&chain.expr)?);
                let mut rest = Vec::with_capacity(chain.ops.len());
                for (i, step) in chain.ops.iter().enumerate() {
                    let op = compare_op(step.op);
                    let last = i + 1 == chain.ops.len();
                    rest.push((op, self.operand(op, &step.expr, last)?));
                }
                Node::Compare(first, rest)
            }
            Expr::IfExpr(if_expr) => Node::If(
                Box::new(self.expr(&if_expr.test_expr)?),
                Box::new(self.expr(&if_expr.true_expr)?),
                match &if_expr.false_expr {
                    Some(e) => Some(Box::new(self.expr(e)?)),
                    None => None,
                },
            ),
            Expr::Test(test) if test.args.is_empty() => {
                Node::Test(test_named(test.name)?, Box::new(self.expr(&test.expr)?))
            }
            Expr::GetAttr(attr) => Node::Attr(Box::new(self.expr(&attr.expr)?), attr.name.into()),
            _ => return None,
        })
    }

    fn bin_op(&mut self, op: BinOpKind, left: &Expr<'_>, right: &Expr<'_>) -> Option<Node> {
        let cmp = match op {
            BinOpKind::Eq => Some(Cmp::Eq),
            BinOpKind::Ne => Some(Cmp::Ne),
            BinOpKind::Lt => Some(Cmp::Lt),
            BinOpKind::Lte => Some(Cmp::Lte),
            BinOpKind::Gt => Some(Cmp::Gt),
            BinOpKind::Gte => Some(Cmp::Gte),
            BinOpKind::In => Some(Cmp::In),
            _ => None,
        };
        if let Some(cmp) = cmp {
            let first = Box::new(self.expr(left)?);
            return Some(Node::Compare(
                first,
                vec![(cmp, self.operand(cmp, right, true)?)],
            ));
        }
        let a = Box::new(self.expr(left)?);
        let b = Box::new(self.expr(right)?);
        let arith = match op {
            BinOpKind::ScAnd => return Some(Node::And(a, b)),
            BinOpKind::ScOr => return Some(Node::Or(a, b)),
            BinOpKind::Concat => return Some(Node::Concat(a, b)),
            BinOpKind::Add => Arith::Add,
            BinOpKind::Sub => Arith::Sub,
            BinOpKind::Mul => Arith::Mul,
            BinOpKind::Div => Arith::Div,
            BinOpKind::FloorDiv => Arith::FloorDiv,
            BinOpKind::Rem => Arith::Rem,
            BinOpKind::Pow => Arith::Pow,
            _ => return None,
        };
        Some(Node::Arith(arith, a, b))
    }

    /// The right side of a comparison: a constant list only as the last container of `in`.
    fn operand(&mut self, op: Cmp, expr: &Expr<'_>, last: bool) -> Option<Node> {
        if let (Cmp::In | Cmp::NotIn, true) = (op, last)
            && let Some(value) = expr.as_const()
            && value.kind() == ValueKind::Seq
            && !value.is_tuple()
        {
            self.nodes += 1;
            let items = value.try_iter().ok()?.map(|item| constant(&item));
            return items.collect::<Option<Vec<_>>>().map(Node::ConstList);
        }
        self.expr(expr)
    }
}

/// A scalar constant; `None` for containers and numbers outside `i64`/`f64`.
fn constant(value: &TemplateValue) -> Option<Const> {
    Some(match value.kind() {
        ValueKind::None => Const::None,
        ValueKind::Bool => Const::Bool(value.is_true()),
        ValueKind::Number if value.is_integer() => Const::Int(i64::try_from(value.clone()).ok()?),
        ValueKind::Number => Const::Float(f64::try_from(value.clone()).ok()?),
        ValueKind::String if !value.is_safe() => Const::Str(value.as_str()?.into()),
        _ => return None,
    })
}

fn compare_op(op: CompareOpKind) -> Cmp {
    match op {
        CompareOpKind::Eq => Cmp::Eq,
        CompareOpKind::Ne => Cmp::Ne,
        CompareOpKind::Lt => Cmp::Lt,
        CompareOpKind::Lte => Cmp::Lte,
        CompareOpKind::Gt => Cmp::Gt,
        CompareOpKind::Gte => Cmp::Gte,
        CompareOpKind::In => Cmp::In,
        CompareOpKind::NotIn => Cmp::NotIn,
    }
}

fn test_named(name: &str) -> Option<Test> {
    Some(match name {
        "defined" => Test::Defined,
        "undefined" => Test::Undefined,
        "none" => Test::None,
        "number" => Test::Number,
        "integer" | "int" => Test::Integer,
        "float" => Test::Float,
        "string" => Test::String,
        "boolean" => Test::Boolean,
        "true" => Test::True,
        "false" => Test::False,
        _ => return None,
    })
}
