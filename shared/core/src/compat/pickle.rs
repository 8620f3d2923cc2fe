//! A data-only reader for the Python pickles the original Scission wrote.
//!
//! It interprets the small subset of the pickle machine those files use (protocols 2-4:
//! dicts, lists, tuples, strings, ints, floats, memo, `NEWOBJ` + `BUILD` of one allowed class)
//! into an arena of plain values. It never executes anything: `GLOBAL` may only name the
//! classes the caller allows, and any other opcode is an error. Sizes are bounded.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A value read from a pickle; containers refer to other values by index in [`Pickle::values`].
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<usize>),
    /// A tuple.
    Tuple(Vec<usize>),
    /// A dict, in insertion order.
    Dict(Vec<(usize, usize)>),
    /// An allowed class (by its index in the allow-list).
    Class(usize),
    /// An instance of an allowed class, with its `__dict__` once built.
    Instance {
        /// Index in the allow-list.
        class: usize,
        /// The state dict, if `BUILD` ran.
        state: Option<usize>,
    },
}

/// A decoded pickle: every value, and the index of the root.
#[derive(Clone, Debug, PartialEq)]
pub struct Pickle {
    /// The arena.
    pub values: Vec<Value>,
    /// Index of the top-level value.
    pub root: usize,
}

/// Why a pickle was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pickle offset {offset}: {message}")]
pub struct PickleError {
    /// Byte offset of the failing opcode.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Most values a pickle may hold.
pub const MAX_VALUES: usize = 4_000_000;

#[derive(Clone, Copy)]
enum Slot {
    Value(usize),
    Mark,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    allowed: &'a [(&'a str, &'a str)],
    values: Vec<Value>,
    stack: Vec<Slot>,
    memo: Vec<Option<usize>>,
}

impl Machine<'_> {
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.op_at, message: message.into() })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let Some(end) = self.pos.checked_add(n).filter(|&e| e <= self.data.len()) else {
            return self.fail("truncated");
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == b'\n') else { return self.fail("unterminated line") };
        let text = core::str::from_utf8(&rest[..len]).map(String::from);
        self.pos += len + 1;
        text.or_else(|_| self.fail("line is not UTF-8"))
    }

    fn string(&mut self, len: usize) -> Result<usize, PickleError> {
        let bytes = self.take(len)?;
        match core::str::from_utf8(bytes) {
            Ok(s) => {
                let s = String::from(s);
                self.push_new(Value::Str(s))
            }
            Err(_) => self.fail("string is not UTF-8"),
        }
    }

    fn push_new(&mut self, v: Value) -> Result<usize, PickleError> {
        if self.values.len() >= MAX_VALUES {
            return self.fail("too many values");
        }
        self.values.push(v);
        let id = self.values.len() - 1;
        self.stack.push(Slot::Value(id));
        Ok(id)
    }

    fn pop(&mut self) -> Result<usize, PickleError> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => self.fail("unexpected mark"),
            None => self.fail("stack underflow"),
        }
    }

    fn top(&self) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Slot::Value(v)) => Ok(*v),
            _ => self.fail("no value on the stack"),
        }
    }

    fn pop_to_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else { return self.fail("no mark") };
        let items = self.stack[mark + 1..].iter().map(|s| if let Slot::Value(v) = s { *v } else { 0 }).collect();
        self.stack.truncate(mark);
        Ok(items)
    }

    fn memo_put(&mut self, index: usize) -> Result<(), PickleError> {
        if index > MAX_VALUES {
            return self.fail("memo index too large");
        }
        let top = self.top()?;
        if self.memo.len() <= index {
            self.memo.resize(index + 1, None);
        }
        self.memo[index] = Some(top);
        Ok(())
    }

    fn memo_get(&mut self, index: usize) -> Result<(), PickleError> {
        match self.memo.get(index).copied().flatten() {
            Some(v) => {
                self.stack.push(Slot::Value(v));
                Ok(())
            }
            None => self.fail(format!("memo {index} is empty")),
        }
    }

    fn extend_dict(&mut self, dict: usize, items: &[usize]) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.fail("odd number of dict items");
        }
        let pairs = items.chunks(2).map(|kv| (kv[0], kv[1]));
        match &mut self.values[dict] {
            Value::Dict(entries) => {
                entries.extend(pairs);
                Ok(())
            }
            _ => self.fail("SETITEMS on a non-dict"),
        }
    }

    fn extend_list(&mut self, list: usize, items: &[usize]) -> Result<(), PickleError> {
        match &mut self.values[list] {
            Value::List(entries) => {
                entries.extend_from_slice(items);
                Ok(())
            }
            _ => self.fail("APPENDS on a non-list"),
        }
    }

    fn global(&mut self) -> Result<(), PickleError> {
        let (module, name) = (self.line()?, self.line()?);
        match self.allowed.iter().position(|&(m, n)| m == module && n == name) {
            Some(class) => self.push_new(Value::Class(class)).map(drop),
            None => self.fail(format!("class {module}.{name} is not allowed")),
        }
    }

    fn new_object(&mut self) -> Result<(), PickleError> {
        let _args = self.pop()?;
        let cls = self.pop()?;
        match self.values[cls] {
            Value::Class(class) => self.push_new(Value::Instance { class, state: None }).map(drop),
            _ => self.fail("NEWOBJ on something that is not an allowed class"),
        }
    }

    fn build(&mut self) -> Result<(), PickleError> {
        let state = self.pop()?;
        let obj = self.top()?;
        match &mut self.values[obj] {
            Value::Instance { state: s, .. } => {
                *s = Some(state);
                Ok(())
            }
            _ => self.fail("BUILD on something that is not an instance"),
        }
    }

    fn tuple(&mut self, items: Vec<usize>) -> Result<(), PickleError> {
        self.push_new(Value::Tuple(items)).map(drop)
    }

    /// Executes one opcode; `Ok(true)` at STOP.
    fn step(&mut self) -> Result<bool, PickleError> {
        self.op_at = self.pos;
        let op = self.u8()?;
        match op {
            0x80 => drop(self.u8()?),            // PROTO
            0x95 => drop(self.take(8)?),         // FRAME
            b'.' => return Ok(true),             // STOP
            b'(' => self.stack.push(Slot::Mark), // MARK
            b'}' => drop(self.push_new(Value::Dict(Vec::new()))?),
            b']' => drop(self.push_new(Value::List(Vec::new()))?),
            b')' => self.tuple(Vec::new())?,
            b'N' => drop(self.push_new(Value::None)?),
            0x88 => drop(self.push_new(Value::Bool(true))?),
            0x89 => drop(self.push_new(Value::Bool(false))?),
            b'K' => {
                let v = self.u8()?;
                self.push_new(Value::Int(i64::from(v)))?;
            }
            b'M' => {
                let b = self.take(2)?;
                let v = u16::from_le_bytes([b[0], b[1]]);
                self.push_new(Value::Int(i64::from(v)))?;
            }
            b'J' => {
                let v = self.u32()? as i32;
                self.push_new(Value::Int(i64::from(v)))?;
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                self.push_new(Value::Float(v))?;
            }
            b'X' => {
                let len = self.u32()? as usize;
                self.string(len)?;
            }
            0x8c => {
                let len = usize::from(self.u8()?);
                self.string(len)?;
            }
            b'q' => {
                let i = usize::from(self.u8()?);
                self.memo_put(i)?;
            }
            b'r' => {
                let i = self.u32()? as usize;
                self.memo_put(i)?;
            }
            0x94 => {
                let i = self.memo.len();
                self.memo_put(i)?;
            }
            b'h' => {
                let i = usize::from(self.u8()?);
                self.memo_get(i)?;
            }
            b'j' => {
                let i = self.u32()? as usize;
                self.memo_get(i)?;
            }
            b'u' => {
                let items = self.pop_to_mark()?;
                let dict = self.top()?;
                self.extend_dict(dict, &items)?;
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                let dict = self.top()?;
                self.extend_dict(dict, &[k, v])?;
            }
            b'e' => {
                let items = self.pop_to_mark()?;
                let list = self.top()?;
                self.extend_list(list, &items)?;
            }
            b'a' => {
                let v = self.pop()?;
                let list = self.top()?;
                self.extend_list(list, &[v])?;
            }
            b't' => {
                let items = self.pop_to_mark()?;
                self.tuple(items)?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.tuple(items)?;
            }
            b'c' => self.global()?,
            0x81 => self.new_object()?,
            b'b' => self.build()?,
            other => return self.fail(format!("opcode 0x{other:02x} is not supported (data-only reader)")),
        }
        Ok(false)
    }
}

/// Decodes `data`, allowing instances of the `(module, name)` classes in `allowed` only.
pub fn read(data: &[u8], allowed: &[(&str, &str)]) -> Result<Pickle, PickleError> {
    let mut m = Machine { data, pos: 0, op_at: 0, allowed, values: Vec::new(), stack: Vec::new(), memo: Vec::new() };
    while !m.step()? {}
    let root = m.pop()?;
    Ok(Pickle { values: m.values, root })
}
