//! Error context for the std crates above the core: `context_trait!(MyError)` defines a
//! `Context` trait (with anyhow's `context` / `with_context`) that turns any error, or `None`,
//! into `MyError` with what was being done. `MyError` needs the variants
//! `Invalid(String)` and `Context { what: String, source: Cause }`.

/// Any underlying error.
pub type Cause = alloc::boxed::Box<dyn core::error::Error + Send + Sync>;

/// An error type that can say "this is not usable" in its own words (its `Invalid` variant).
pub trait FromMessage {
    /// The error for `message`.
    fn from_message(message: alloc::string::String) -> Self;
}

/// Formats a message (for [`bail!`](crate::bail) and [`invalid!`](crate::invalid)).
pub fn message(args: core::fmt::Arguments<'_>) -> alloc::string::String {
    alloc::fmt::format(args)
}

/// Returns early with the enclosing function's error type, built from a formatted message.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::context::FromMessage::from_message($crate::context::message(format_args!($($arg)*))))
    };
}

/// An error of the type the context asks for, built from a formatted message.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => {
        $crate::context::FromMessage::from_message($crate::context::message(format_args!($($arg)*)))
    };
}

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

        impl $crate::context::FromMessage for $error {
            fn from_message(message: String) -> Self {
                $error::Invalid(message)
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
