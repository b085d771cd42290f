//! Loaded source files. The front end never touches the file system itself:
//! callers hand it a [`Loader`], so the binary owns I/O and tests can load
//! from memory.

use crate::span::FileId;

#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The name shown in diagnostics (the path as the user gave it).
    pub name: String,
    pub text: String,
}

#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile {
            name: name.into(),
            text: text.into(),
        });
        FileId(self.files.len() as u32 - 1)
    }
    pub fn files(&self) -> impl Iterator<Item = &SourceFile> {
        self.files.iter()
    }
    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id.0 as usize)
    }
    pub fn name(&self, id: FileId) -> &str {
        self.get(id).map_or("<unknown>", |f| f.name.as_str())
    }
    pub fn text(&self, id: FileId) -> &str {
        self.get(id).map_or("", |f| f.text.as_str())
    }
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(id);
        let mut off = offset.min(text.len());
        while !text.is_char_boundary(off) {
            off -= 1;
        }
        let before = &text[..off];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }
}

/// Why a file could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    NotFound,
    NotUtf8,
    TooLarge(u64),
    Other(String),
}

/// Resolves and reads imported files. `resolve` turns an import string,
/// relative to the importing file's name, into a canonical name (or `None`
/// if no such file exists); `load` reads it.
pub trait Loader {
    fn resolve(&self, importer: &str, path: &str) -> Option<String>;
    fn load(&self, name: &str) -> Result<String, LoadError>;
}

/// An in-memory loader, for tests and the fuzzer.
#[derive(Debug, Default, Clone)]
pub struct MemLoader {
    pub files: std::collections::BTreeMap<String, String>,
}

impl Loader for MemLoader {
    fn resolve(&self, _importer: &str, path: &str) -> Option<String> {
        self.files.contains_key(path).then(|| path.to_string())
    }
    fn load(&self, name: &str) -> Result<String, LoadError> {
        self.files.get(name).cloned().ok_or(LoadError::NotFound)
    }
}
