//! Error context for the std crates above the core: `context_trait!(MyError)` defines a
//! `Context` trait (with anyhow's `context` / `with_context`) that turns any error, or `None`,
//! into `MyError` with what was being done. `MyError` needs the variants
//! `Invalid(String)` and `Context { what: String, source: Cause }`.

/// Any underlying error.
pub type Cause = alloc::boxed::Box<dyn core::error::Error + Send + Sync>;

/// Defines `Context`, `Result` and `bail!`-style early returns for error type `$error`.
#[macro_export]
macro_rules! context_trait {
    ($error:ident) => {
        /// Results of this crate.
        pub type Result<T, E = $error> = ::core::result::Result<T, E>;

        /// What was being done, attached to a failure.
        pub trait Context<T> {
            /// Fails with `what` as the context.
            fn context(self, what: impl ::core::fmt::Display) -> Result<T>;
            /// Fails with `what()` as the context (computed only on failure).
            fn with_context<S: ::core::fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T>;
        }

        impl<T, E: Into<$crate::context::Cause>> Context<T> for ::core::result::Result<T, E> {
            fn context(self, what: impl ::core::fmt::Display) -> Result<T> {
                self.map_err(|e| $error::Context { what: what.to_string(), source: e.into() })
            }

            fn with_context<S: ::core::fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T> {
                self.map_err(|e| $error::Context { what: what().to_string(), source: e.into() })
            }
        }

        impl<T> Context<T> for Option<T> {
            fn context(self, what: impl ::core::fmt::Display) -> Result<T> {
                self.ok_or_else(|| $error::Invalid(what.to_string()))
            }

            fn with_context<S: ::core::fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T> {
                self.ok_or_else(|| $error::Invalid(what().to_string()))
            }
        }
    };
}
