//! The values of the native evaluator and minijinja's operators on them.
//!
//! Each operator mirrors `minijinja::value::ops` (3.1) for the cases it computes itself and
//! answers [`Bail`] for every other one: an error, an integer that leaves `i64`, a container,
//! a string repetition. A bail makes the caller evaluate the whole expression with minijinja,
//! so errors keep minijinja's exact messages and rare cases its exact results.

use std::borrow::Cow;
use std::cmp::Ordering;

use minijinja::Value as TemplateValue;
use serde_json::Value as JsonValue;

/// "Let minijinja evaluate this one."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bail;

pub type Res<T> = Result<T, Bail>;

/// A value during native evaluation, borrowing the event's strings and the expression's
/// constants.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    Undefined,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An array or object field: only attribute lookups and tests look into it.
    Json(&'a JsonValue),
}

impl<'a> Val<'a> {
    /// A field as minijinja's `to_template_value` would see it.
    pub fn from_json(value: &'a JsonValue) -> Res<Self> {
        Ok(match value {
            JsonValue::Null => Val::None,
            JsonValue::Bool(b) => Val::Bool(*b),
            JsonValue::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Val::Int(i),
                // Above `i64::MAX`: minijinja holds it as a u64.
                _ if n.is_u64() => return Err(Bail),
                (None, Some(f)) => Val::Float(f),
                (None, None) => return Err(Bail),
            },
            JsonValue::String(s) => Val::Str(Cow::Borrowed(s)),
            JsonValue::Array(_) | JsonValue::Object(_) => Val::Json(value),
        })
    }

    /// The same value as minijinja holds it (cheap for everything but strings).
    pub fn to_template(&self) -> Res<TemplateValue> {
        Ok(match self {
            Val::Undefined => TemplateValue::UNDEFINED,
            Val::None => TemplateValue::from(()),
            Val::Bool(b) => TemplateValue::from(*b),
            Val::Int(i) => TemplateValue::from(*i),
            Val::Float(f) => TemplateValue::from(*f),
            Val::Str(s) => TemplateValue::from(&**s),
            Val::Json(_) => return Err(Bail),
        })
    }

    /// `Value::is_true`.
    pub fn is_true(&self) -> Res<bool> {
        Ok(match self {
            Val::Undefined | Val::None => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Str(s) => !s.is_empty(),
            Val::Json(_) => return Err(Bail),
        })
    }

    /// The value as `from_template_value` stores it in an event; `None` for undefined.
    pub fn into_json(self) -> Res<Option<JsonValue>> {
        Ok(Some(match self {
            Val::Undefined => return Ok(None),
            Val::None => JsonValue::Null,
            Val::Bool(b) => JsonValue::Bool(b),
            Val::Int(i) => JsonValue::from(i),
            Val::Float(f) => float_to_json(f),
            Val::Str(s) => JsonValue::String(s.into_owned()),
            Val::Json(_) => return Err(Bail),
        }))
    }
}

/// A float as `from_template_value` stores it: minijinja's `i64::try_from` takes a float
/// without a fraction as an integer, so `212.0` becomes `212`; NaN and infinities become null.
pub fn float_to_json(f: f64) -> JsonValue {
    if f as i64 as f64 == f {
        JsonValue::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(JsonValue::Null, JsonValue::Number)
    }
}

#[derive(Clone, Copy)]
enum Num {
    I(i64),
    F(f64),
}

/// An operand of arithmetic: minijinja's `coerce` treats a bool as 0 or 1.
fn num(v: &Val) -> Option<Num> {
    match v {
        Val::Int(i) => Some(Num::I(*i)),
        Val::Bool(b) => Some(Num::I(*b as i64)),
        Val::Float(f) => Some(Num::F(*f)),
        _ => None,
    }
}

/// Both operands as floats (`coerce` with `lossy`), if either is one.
fn floats(a: Num, b: Num) -> (f64, f64) {
    let f = |n: Num| match n {
        Num::I(i) => i as f64,
        Num::F(f) => f,
    };
    (f(a), f(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Pow,
}

/// `+ - * / // % **` on two values.
pub fn arith<'a>(op: Arith, a: &Val<'a>, b: &Val<'a>, budget: &mut Budget) -> Res<Val<'a>> {
    if let (Arith::Add, Val::Str(x), Val::Str(y)) = (op, a, b) {
        return Ok(Val::Str(Cow::Owned(budget.concat(x, y)?)));
    }
    let (Some(x), Some(y)) = (num(a), num(b)) else {
        return Err(Bail);
    };
    if op == Arith::Div {
        // `/` is always a float: both sides as `as_f64(lossy)`.
        let (x, y) = floats(x, y);
        return if y == 0.0 {
            Err(Bail)
        } else {
            Ok(Val::Float(x / y))
        };
    }
    match (x, y) {
        (Num::I(x), Num::I(y)) => int_arith(op, x, y),
        _ => {
            let (x, y) = floats(x, y);
            float_arith(op, x, y)
        }
    }
}

fn int_arith<'a>(op: Arith, x: i64, y: i64) -> Res<Val<'a>> {
    let int = |v: Option<i64>| v.map(Val::Int).ok_or(Bail);
    match op {
        Arith::Add => int(x.checked_add(y)),
        Arith::Sub => int(x.checked_sub(y)),
        Arith::Mul => int(x.checked_mul(y)),
        Arith::Div => Err(Bail),
        Arith::FloorDiv => int(int_div_rem_floor(x, y).map(|r| r.0)),
        Arith::Rem => int(int_div_rem_floor(x, y).map(|r| r.1)),
        Arith::Pow if y < 0 => {
            // A negative exponent gives a float; zero to it fails like a division by zero.
            if x == 0 {
                Err(Bail)
            } else {
                Ok(Val::Float((x as f64).powf(y as f64)))
            }
        }
        Arith::Pow => int(u32::try_from(y).ok().and_then(|y| x.checked_pow(y))),
    }
}

fn float_arith<'a>(op: Arith, x: f64, y: f64) -> Res<Val<'a>> {
    Ok(Val::Float(match op {
        Arith::Add => x + y,
        Arith::Sub => x - y,
        Arith::Mul => x * y,
        Arith::Div => return Err(Bail),
        Arith::FloorDiv | Arith::Rem if y == 0.0 => return Err(Bail),
        Arith::FloorDiv => float_div_rem_floor(x, y).0,
        Arith::Rem => float_div_rem_floor(x, y).1,
        Arith::Pow if x == 0.0 && y < 0.0 => return Err(Bail),
        Arith::Pow => x.powf(y),
    }))
}

/// Python's floor division and remainder (minijinja's `int_div_rem_floor` in `i64`: the
/// one result that leaves `i64`, `i64::MIN // -1`, is a bail).
fn int_div_rem_floor(a: i64, b: i64) -> Option<(i64, i64)> {
    let mut quotient = a.checked_div(b)?;
    let mut remainder = a.checked_rem(b)?;
    if remainder != 0 && (remainder < 0) != (b < 0) {
        quotient = quotient.checked_sub(1)?;
        remainder = remainder.checked_add(b)?;
    }
    Some((quotient, remainder))
}

/// minijinja's `float_div_rem_floor`, line for line.
fn float_div_rem_floor(a: f64, b: f64) -> (f64, f64) {
    let mut remainder = a % b;
    let mut quotient = (a - remainder) / b;
    if remainder != 0.0 {
        if (remainder < 0.0) != (b < 0.0) {
            remainder += b;
            quotient -= 1.0;
        }
    } else {
        remainder = 0.0f64.copysign(b);
    }
    if quotient != 0.0 {
        let mut floored = quotient.floor();
        if quotient - floored > 0.5 {
            floored += 1.0;
        }
        quotient = floored;
    } else {
        quotient = 0.0f64.copysign(a / b);
    }
    (quotient, remainder)
}

/// Unary `-`: numbers only (a bool is not one here), `-i64::MIN` leaves `i64`.
pub fn neg<'a>(v: &Val<'a>) -> Res<Val<'a>> {
    match v {
        Val::Int(i) => i.checked_neg().map(Val::Int).ok_or(Bail),
        Val::Float(f) => Ok(Val::Float(-f)),
        _ => Err(Bail),
    }
}

/// `==` as minijinja's `PartialEq for Value`.
pub fn equals(a: &Val, b: &Val) -> Res<bool> {
    Ok(match (a, b) {
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Float(x), Val::Float(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Int(i), Val::Float(f)) | (Val::Float(f), Val::Int(i)) => {
            // `coerce` without `lossy`: an integer a float cannot hold exactly is unequal.
            let g = *i as f64;
            g as i64 == *i && g == *f
        }
        _ => a.to_template()? == b.to_template()?,
    })
}

/// `<`, `<=`, … as minijinja's `Ord for Value` (a total order across kinds).
pub fn compare(a: &Val, b: &Val) -> Res<Ordering> {
    Ok(match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Str(x), Val::Str(y)) => (**x).cmp(&**y),
        _ => a.to_template()?.cmp(&b.to_template()?),
    })
}

/// `~`: both sides as they print.
pub fn concat<'a>(a: &Val<'a>, b: &Val<'a>, budget: &mut Budget) -> Res<Val<'a>> {
    let text = |v: &Val<'a>| -> Res<Cow<'a, str>> {
        Ok(match v {
            Val::Str(s) => s.clone(),
            other => Cow::Owned(other.to_template()?.to_string()),
        })
    };
    let (x, y) = (text(a)?, text(b)?);
    Ok(Val::Str(Cow::Owned(budget.concat(&x, &y)?)))
}

/// `needle in container` for a string container (an undefined one holds nothing).
pub fn contains_in_str(container: &Val, needle: &Val, budget: &mut Budget) -> Res<bool> {
    match (container, needle) {
        (Val::Undefined, _) => Ok(false),
        (Val::Str(haystack), Val::Str(needle)) => {
            budget.spend(haystack.len())?;
            Ok(haystack.contains(&**needle))
        }
        _ => Err(Bail),
    }
}

/// How many bytes of strings one native evaluation may create or scan before it leaves the
/// rest to minijinja. Far below what `template::FUEL` allows (64 million units: one per
/// byte, 64 per instruction), so minijinja never runs out of fuel on an evaluation the native
/// path completes: both agree, and this bounds the native path the same way fuel bounds
/// minijinja.
pub const BYTE_BUDGET: usize = 1 << 20;

/// The bytes one evaluation has left (see [`BYTE_BUDGET`]).
pub struct Budget(usize);

impl Default for Budget {
    fn default() -> Self {
        Self(BYTE_BUDGET)
    }
}

impl Budget {
    fn spend(&mut self, bytes: usize) -> Res<()> {
        self.0 = self.0.checked_sub(bytes).ok_or(Bail)?;
        Ok(())
    }

    fn concat(&mut self, a: &str, b: &str) -> Res<String> {
        self.spend(a.len() + b.len())?;
        let mut out = String::with_capacity(a.len() + b.len());
        out.push_str(a);
        out.push_str(b);
        Ok(out)
    }
}
