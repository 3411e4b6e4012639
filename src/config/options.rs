//! What the typed options of every component and service are, whatever their type.
//!
//! The engine holds options as trait objects (`Arc<dyn SourceComponent>`, ...) so it
//! never names a concrete type. A reload still has to tell a changed component from an
//! unchanged one, so options compare through [`Options::same_as`], which every
//! `PartialEq` type gets for free.

use std::any::Any;
use std::fmt::Debug;

/// Typed options the engine can print, compare and share across tasks.
pub trait Options: Debug + Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;

    /// Whether `other` holds the same options of the same type.
    fn same_as(&self, other: &dyn Options) -> bool;
}

impl<T: Debug + PartialEq + Send + Sync + 'static> Options for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same_as(&self, other: &dyn Options) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::Options;

    #[derive(Debug, PartialEq)]
    struct A(u32);
    #[derive(Debug, PartialEq)]
    struct B(u32);

    #[test]
    fn options_are_the_same_only_with_equal_values_of_one_type() {
        let (one, also_one, two) = (A(1), A(1), A(2));
        assert!(one.same_as(&also_one));
        assert!(!one.same_as(&two));
        assert!(!one.same_as(&B(1)));
    }
}
