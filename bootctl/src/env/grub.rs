//! GRUB's environment block (`grubenv`).
//!
//! A 1024-byte file: the signature line `# GRUB Environment Block\n`, then `name=value\n` lines,
//! then `#` up to the end. In values a backslash escapes the next byte, which is how a value
//! holds `\` (`\\`) or a newline (`\` followed by a real newline). Lines starting with `#` are
//! comments. GRUB appends new variables at the first byte of the trailing `#` run, and refuses
//! to write a block whose last variable line does not end in a newline.
//!
//! # Detecting torn writes
//!
//! The format has no checksum, and GRUB rewrites the block at boot (`save_env` of the `*_TRY`
//! flags), so a checksum over the block would be invalidated by every boot. Instead Rota
//! brackets the variables it writes with two copies of a generation number:
//! `ROTA_GEN=xxxxxxxx` as the first variable and `ROTA_GEN_END=xxxxxxxx` as the last line
//! before the free space. GRUB and `grub-editenv` keep both untouched. A write that stopped
//! part-way (or reached the disk out of order) leaves them different, or leaves one missing,
//! and the reader reports a torn write instead of returning a mix of old and new values.
//!
//! For that to hold for every possible tear, the new block's `ROTA_GEN_END` line must end at or
//! after the end of the old block's content; otherwise a tear just past the new end would expose
//! stale old lines after it. [`serialize`] pads with a comment line to guarantee it.

use super::EnvVars;

/// Size GRUB creates and Rota keeps.
pub const GRUBENV_SIZE: usize = 1024;
/// First line of every block.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";
/// First variable Rota writes.
pub const GEN_HEAD: &str = "ROTA_GEN";
/// Last variable Rota writes.
pub const GEN_TAIL: &str = "ROTA_GEN_END";

/// A decoded block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrubEnvBlock {
    /// Variables in block order, without Rota's generation markers.
    pub vars: EnvVars,
    /// Rota's generation, if Rota wrote this block (absent for blocks made by other tools).
    pub generation: Option<u32>,
    /// Offset of GRUB's free space: just past the last line that is not padding.
    pub content_end: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrubEnvError {
    #[error("is {size} bytes; a grubenv block must be exactly {GRUBENV_SIZE} bytes")]
    WrongSize { size: u64 },
    #[error("does not start with the signature \"# GRUB Environment Block\"")]
    BadSignature,
    #[error("NUL byte at offset {offset}: the block is corrupt")]
    NulByte { offset: usize },
    #[error("line at offset {offset} has no '=': the block is corrupt")]
    MissingEquals { offset: usize },
    #[error(
        "variable at offset {offset} is not terminated by a newline: the block is corrupt or torn"
    )]
    Unterminated { offset: usize },
    #[error("the last variable line does not end in a newline before the padding, so GRUB cannot save to it: the block is corrupt or torn")]
    NoFreeSpace,
    #[error("torn write detected: {GEN_HEAD}={head:?} but {GEN_TAIL}={tail:?}; the last write to this block did not complete")]
    TornWrite {
        head: Option<String>,
        tail: Option<String>,
    },
    #[error("generation {value:?} is not 8 hex digits: the block is corrupt")]
    BadGeneration { value: String },
    #[error("variables need {needed} bytes, more than a {GRUBENV_SIZE}-byte block holds")]
    TooBig { needed: usize },
    #[error("variable name {name:?} is invalid (must be non-empty, must not start with '#' or contain '=', newline or NUL, and must not be one of Rota's markers)")]
    InvalidName { name: String },
    #[error("value of {name:?} contains a NUL byte")]
    InvalidValue { name: String },
}

/// Decodes a block, the way GRUB's `grub_envblk_iterate` walks it, but rejecting what GRUB would
/// silently stop at.
pub fn parse(block: &[u8]) -> Result<GrubEnvBlock, GrubEnvError> {
    if block.len() != GRUBENV_SIZE {
        return Err(GrubEnvError::WrongSize {
            size: block.len() as u64,
        });
    }
    if !block.starts_with(SIGNATURE) {
        return Err(GrubEnvError::BadSignature);
    }
    // GRUB and grub-editenv never write NUL (values are C strings); a NUL means damage, such
    // as zero-filled sectors from an interrupted write.
    if let Some(offset) = block.iter().position(|&b| b == 0) {
        return Err(GrubEnvError::NulByte { offset });
    }
    let mut vars = EnvVars::new();
    let mut p = SIGNATURE.len();
    while p < block.len() {
        if block[p] == b'#' {
            p = next_line(block, p);
            continue;
        }
        let line_start = p;
        let eq = block[p..]
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .map(|i| p + i)
            .filter(|&i| block[i] == b'=')
            .ok_or(GrubEnvError::MissingEquals { offset: line_start })?;
        let mut value = Vec::new();
        let mut q = eq + 1;
        loop {
            match block.get(q) {
                None => return Err(GrubEnvError::Unterminated { offset: line_start }),
                Some(b'\n') => break,
                Some(b'\\') => {
                    let escaped = block
                        .get(q + 1)
                        .ok_or(GrubEnvError::Unterminated { offset: line_start })?;
                    value.push(*escaped);
                    q += 2;
                }
                Some(&b) => {
                    value.push(b);
                    q += 1;
                }
            }
        }
        vars.set(&block[line_start..eq], value);
        p = q + 1;
    }
    let content_end = free_space_start(block)?;
    let generation = check_generation(&mut vars)?;
    Ok(GrubEnvBlock {
        vars,
        generation,
        content_end,
    })
}

/// Offset just past the next unescaped newline (GRUB's `find_next_line`).
fn next_line(block: &[u8], mut p: usize) -> usize {
    while p < block.len() {
        match block[p] {
            b'\\' => p += 2,
            b'\n' => break,
            _ => p += 1,
        }
    }
    p + 1
}

/// Where GRUB would append: after the trailing `#` run, which must follow a newline.
fn free_space_start(block: &[u8]) -> Result<usize, GrubEnvError> {
    let mut space = block.len();
    while space > 0 && block[space - 1] == b'#' {
        space -= 1;
    }
    if space == 0 || block[space - 1] != b'\n' {
        return Err(GrubEnvError::NoFreeSpace);
    }
    Ok(space)
}

fn check_generation(vars: &mut EnvVars) -> Result<Option<u32>, GrubEnvError> {
    let head = vars.get_str(GEN_HEAD);
    let tail = vars.get_str(GEN_TAIL);
    vars.remove(GEN_HEAD);
    vars.remove(GEN_TAIL);
    match (head, tail) {
        (None, None) => Ok(None),
        (Some(h), Some(t)) if h == t => {
            if h.len() != 8 {
                return Err(GrubEnvError::BadGeneration { value: h });
            }
            u32::from_str_radix(&h, 16)
                .map(Some)
                .map_err(|_| GrubEnvError::BadGeneration { value: h })
        }
        (head, tail) => Err(GrubEnvError::TornWrite { head, tail }),
    }
}

/// Encodes `vars` as a 1024-byte block with Rota's generation markers. The content (up to and
/// including the `ROTA_GEN_END` line) is made to end at or after `min_content_end`, the
/// `content_end` of the block being replaced, so no tear can expose stale lines (see the module
/// docs).
pub fn serialize(
    vars: &EnvVars,
    generation: u32,
    min_content_end: usize,
) -> Result<Vec<u8>, GrubEnvError> {
    let mut block = Vec::with_capacity(GRUBENV_SIZE);
    block.extend_from_slice(SIGNATURE);
    block.extend_from_slice(format!("{GEN_HEAD}={generation:08x}\n").as_bytes());
    for (name, value) in vars.iter() {
        let valid_name = !name.is_empty()
            && name[0] != b'#'
            && !name.iter().any(|&b| b == b'=' || b == b'\n' || b == 0)
            && name != GEN_HEAD.as_bytes()
            && name != GEN_TAIL.as_bytes();
        if !valid_name {
            return Err(GrubEnvError::InvalidName {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        if value.contains(&0) {
            return Err(GrubEnvError::InvalidValue {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        block.extend_from_slice(name);
        block.push(b'=');
        for &b in value {
            if b == b'\\' || b == b'\n' {
                block.push(b'\\');
            }
            block.push(b);
        }
        block.push(b'\n');
    }
    let tail = format!("{GEN_TAIL}={generation:08x}\n");
    let natural_end = block.len() + tail.len();
    if natural_end < min_content_end {
        // A comment line is at least "#\n": a gap of one byte grows to two.
        let gap = (min_content_end - natural_end).max(2);
        block.resize(block.len() + gap - 1, b'#');
        block.push(b'\n');
    }
    block.extend_from_slice(tail.as_bytes());
    if block.len() > GRUBENV_SIZE {
        return Err(GrubEnvError::TooBig {
            needed: block.len(),
        });
    }
    block.resize(GRUBENV_SIZE, b'#');
    Ok(block)
}

/// An empty block as `grub-editenv create` makes it.
pub fn empty_block() -> Vec<u8> {
    let mut block = SIGNATURE.to_vec();
    block.resize(GRUBENV_SIZE, b'#');
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_grub() {
        let vars: EnvVars = [("k", "a\\b\nc")].into_iter().collect();
        let block = serialize(&vars, 1, 0).unwrap();
        let text = String::from_utf8_lossy(&block);
        assert!(text.contains("k=a\\\\b\\\nc\n"), "{text}");
        let parsed = parse(&block).unwrap();
        assert_eq!(parsed.vars, vars);
        assert_eq!(parsed.generation, Some(1));
    }

    #[test]
    fn foreign_block_without_markers_is_accepted() {
        let mut block = empty_block();
        let content = b"ORDER=A B\nA_OK=1\n";
        block[SIGNATURE.len()..SIGNATURE.len() + content.len()].copy_from_slice(content);
        let parsed = parse(&block).unwrap();
        assert_eq!(parsed.generation, None);
        assert_eq!(parsed.vars.get_str("ORDER").as_deref(), Some("A B"));
        assert_eq!(parsed.content_end, SIGNATURE.len() + content.len());
    }

    #[test]
    fn content_is_padded_to_cover_the_old_content() {
        let vars = EnvVars::new();
        for min in [0, 60, 61, 62, 63, 200] {
            let block = serialize(&vars, 3, min).unwrap();
            let parsed = parse(&block).unwrap();
            assert!(parsed.content_end >= min, "min {min}");
            assert_eq!(parsed.generation, Some(3));
        }
    }

    #[test]
    fn nul_bytes_are_corruption() {
        // Found by the grubenv fuzz target: a NUL inside a value parsed, and the block could
        // then not be written back.
        let mut block = empty_block();
        let at = SIGNATURE.len();
        block[at..at + 6].copy_from_slice(&[b'0', b'=', b'0', 0, 0, b'\n']);
        assert_eq!(parse(&block), Err(GrubEnvError::NulByte { offset: at + 3 }));
    }

    #[test]
    fn mismatched_markers_are_a_torn_write() {
        let block = serialize(&EnvVars::new(), 0x10, 0).unwrap();
        let mut torn = block.clone();
        let tail = b"ROTA_GEN_END=00000010";
        let at = block.windows(tail.len()).position(|w| w == tail).unwrap();
        torn[at + tail.len() - 1] = b'f';
        assert!(matches!(parse(&torn), Err(GrubEnvError::TornWrite { .. })));
    }
}
