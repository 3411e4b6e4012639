//! The native evaluator: an expression compiled once into a small tree that reads the
//! event's fields directly and computes with plain numbers and borrowed strings.
//!
//! minijinja evaluates an expression by building a context, looking each field up by name
//! through [`EventView`] (converting it into a template value) and running its VM; on the
//! `http → remap → filter` path that was most of the CPU per reading. This tree does the
//! same work without those steps, for the part of the language pipelines use most:
//! fields, `device_id`, constants, arithmetic, `~`, comparisons (chained too), `in`, `and`,
//! `or`, `not`, `if … else`, the tests `defined`, `undefined`, `none`, `number`, `integer`,
//! `float`, `string`, `boolean`, `true`, `false`, and attributes of object fields.
//!
//! Two fallbacks keep it exactly minijinja (a differential property test in `tests.rs`
//! holds it to that):
//! - at build time, an expression using anything else (filters, calls, methods, other tests,
//!   slices, `meta`, minijinja's globals) is not compiled natively at all;
//! - at run time, any case the tree does not compute itself (an error, an integer result
//!   outside `i64`, a container operand, more than [`ops::BYTE_BUDGET`] bytes of strings)
//!   is a [`Bail`]: the caller evaluates the whole expression with minijinja, which gives
//!   its own result or error message.
//!
//! [`EventView`]: crate::event::EventView

mod build;
mod ops;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::Value as JsonValue;

pub use build::build;
use ops::{Arith, Budget, Res};
pub use ops::{Bail, Val};

/// What an expression is evaluated against: an event, seen as minijinja's view of it sees
/// it (fields by name, `device_id` from the event rather than its fields).
pub trait Scope {
    /// One field of the body.
    fn field(&self, name: &str) -> Option<&JsonValue>;
    /// The event's device id.
    fn device_id(&self) -> Option<&str>;
    /// The minijinja view, for an expression (or one evaluation) the native path leaves to
    /// minijinja.
    fn view(&self) -> minijinja::Value;
}

/// A constant of the expression.
#[derive(Debug)]
pub enum Const {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

impl Const {
    fn val(&self) -> Val<'_> {
        match self {
            Const::None => Val::None,
            Const::Bool(b) => Val::Bool(*b),
            Const::Int(i) => Val::Int(*i),
            Const::Float(f) => Val::Float(*f),
            Const::Str(s) => Val::Str(Cow::Borrowed(s)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    NotIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    Defined,
    Undefined,
    None,
    Number,
    Integer,
    Float,
    String,
    Boolean,
    True,
    False,
}

/// One node of a compiled expression.
#[derive(Debug)]
pub enum Node {
    Const(Const),
    /// A list literal of constants; only ever the right side of `in`.
    ConstList(Vec<Const>),
    Field(Box<str>),
    DeviceId,
    Attr(Box<Node>, Box<str>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Concat(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// `a < b <= c`: each step compares with the previous operand, stopping at the first
    /// false one.
    Compare(Box<Node>, Vec<(Cmp, Node)>),
    If(Box<Node>, Box<Node>, Option<Box<Node>>),
    Test(Test, Box<Node>),
}

impl Node {
    /// Evaluates the node; a [`Bail`] leaves the whole expression to minijinja.
    pub fn eval<'a>(&'a self, scope: &'a dyn Scope) -> Result<Val<'a>, Bail> {
        self.eval_in(scope, &mut Budget::default())
    }

    fn eval_in<'a>(&'a self, scope: &'a dyn Scope, budget: &mut Budget) -> Res<Val<'a>> {
        Ok(match self {
            Node::Const(c) => c.val(),
            Node::ConstList(_) => return Err(Bail),
            Node::Field(name) => match scope.field(name) {
                Some(value) => Val::from_json(value)?,
                None => Val::Undefined,
            },
            Node::DeviceId => match scope.device_id() {
                Some(id) => Val::Str(Cow::Borrowed(id)),
                None => Val::Undefined,
            },
            Node::Attr(parent, name) => match parent.eval_in(scope, budget)? {
                Val::Json(JsonValue::Object(map)) => match map.get(&**name) {
                    Some(value) => Val::from_json(value)?,
                    None => Val::Undefined,
                },
                _ => return Err(Bail),
            },
            Node::Not(inner) => Val::Bool(!inner.eval_in(scope, budget)?.is_true()?),
            Node::Neg(inner) => ops::neg(&inner.eval_in(scope, budget)?)?,
            Node::Arith(op, a, b) => {
                let a = a.eval_in(scope, budget)?;
                let b = b.eval_in(scope, budget)?;
                ops::arith(*op, &a, &b, budget)?
            }
            Node::Concat(a, b) => {
                let a = a.eval_in(scope, budget)?;
                let b = b.eval_in(scope, budget)?;
                ops::concat(&a, &b, budget)?
            }
            Node::And(a, b) => {
                let a = a.eval_in(scope, budget)?;
                if a.is_true()? {
                    b.eval_in(scope, budget)?
                } else {
                    a
                }
            }
            Node::Or(a, b) => {
                let a = a.eval_in(scope, budget)?;
                if a.is_true()? {
                    a
                } else {
                    b.eval_in(scope, budget)?
                }
            }
            Node::Compare(first, rest) => {
                let mut left = first.eval_in(scope, budget)?;
                for (op, node) in rest {
                    let (holds, right) = compare_step(*op, &left, node, scope, budget)?;
                    if !holds {
                        return Ok(Val::Bool(false));
                    }
                    left = right;
                }
                Val::Bool(true)
            }
            Node::If(test, then, otherwise) => {
                if test.eval_in(scope, budget)?.is_true()? {
                    then.eval_in(scope, budget)?
                } else {
                    match otherwise {
                        Some(node) => node.eval_in(scope, budget)?,
                        None => Val::Undefined,
                    }
                }
            }
            Node::Test(test, inner) => Val::Bool(run_test(*test, &inner.eval_in(scope, budget)?)),
        })
    }
}

/// One comparison of a chain: whether it holds, and its right operand for the next step.
fn compare_step<'a>(
    op: Cmp,
    left: &Val<'a>,
    node: &'a Node,
    scope: &'a dyn Scope,
    budget: &mut Budget,
) -> Res<(bool, Val<'a>)> {
    if let (Cmp::In | Cmp::NotIn, Node::ConstList(items)) = (op, node) {
        let mut found = false;
        for item in items {
            if ops::equals(&item.val(), left)? {
                found = true;
                break;
            }
        }
        // The list itself is only needed again by a longer chain: leave those to minijinja.
        return Ok((found == (op == Cmp::In), Val::Undefined));
    }
    let right = node.eval_in(scope, budget)?;
    let holds = match op {
        Cmp::Eq => ops::equals(left, &right)?,
        Cmp::Ne => !ops::equals(left, &right)?,
        Cmp::Lt => ops::compare(left, &right)? == Ordering::Less,
        Cmp::Lte => ops::compare(left, &right)? != Ordering::Greater,
        Cmp::Gt => ops::compare(left, &right)? == Ordering::Greater,
        Cmp::Gte => ops::compare(left, &right)? != Ordering::Less,
        Cmp::In => ops::contains_in_str(&right, left, budget)?,
        Cmp::NotIn => !ops::contains_in_str(&right, left, budget)?,
    };
    Ok((holds, right))
}

/// minijinja's built-in tests of the same names.
fn run_test(test: Test, v: &Val) -> bool {
    match test {
        Test::Defined => !matches!(v, Val::Undefined),
        Test::Undefined => matches!(v, Val::Undefined),
        Test::None => matches!(v, Val::None),
        // `is number` holds for bools too (their kind is a number's in minijinja's test).
        Test::Number => matches!(v, Val::Int(_) | Val::Float(_) | Val::Bool(_)),
        Test::Integer => matches!(v, Val::Int(_)),
        Test::Float => matches!(v, Val::Float(_)),
        Test::String => matches!(v, Val::Str(_)),
        Test::Boolean => matches!(v, Val::Bool(_)),
        Test::True => matches!(v, Val::Bool(true)),
        Test::False => matches!(v, Val::Bool(false)),
    }
}
