//! Boot environment formats and their storage.
//!
//! The format modules (`uboot`, `grub`, `fw_config`) are pure: bytes or text in, values out, so
//! they can be fuzzed and property-tested. The `*_store` modules do the I/O.

pub mod fw_config;
pub mod grub;
pub mod grub_store;
mod io;
pub mod uboot;
pub mod uboot_store;

/// An ordered list of environment variables. Names and values are bytes because both formats
/// allow any byte except their separators, and variables Rota does not own must survive a
/// rewrite bit for bit. Order is kept so a rewrite changes as little as possible.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvVars {
    vars: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EnvVars {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.vars
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `name` as text (lossy: these are ASCII in practice).
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Sets `name`, replacing its value in place or appending it.
    pub fn set(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.vars.push((name.to_vec(), value.to_vec())),
        }
    }

    /// Removes `name` if present.
    pub fn remove(&mut self, name: &str) {
        self.vars.retain(|(n, _)| n != name.as_bytes());
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(N, V)> for EnvVars {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        let mut vars = EnvVars::new();
        for (n, v) in iter {
            vars.set(n, v);
        }
        vars
    }
}

/// One write that a store is about to make: the whole change is these bytes at this offset.
/// `store` applies it; tests apply prefixes of it to simulate a power cut part-way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedWrite {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl PlannedWrite {
    /// Writes and fsyncs.
    pub fn apply(&self) -> crate::Result<()> {
        io::write_at_durably(&self.path, self.offset, &self.bytes)
    }
}
