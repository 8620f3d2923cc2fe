//! Compatibility with the original Scission (2020, Python + Keras): its pickled benchmark
//! files, its network CSV, its criteria syntax and its result lines. Data only: nothing from
//! those files is ever executed.

pub mod pickle;
pub mod scission;
