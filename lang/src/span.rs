//! Source positions. A `Span` is a byte range in one file; the file is an
//! index into the [`crate::source::SourceMap`] so spans stay `Copy` and small.

/// Index of a loaded file in the source map.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

impl FileId {
    /// Placeholder used while lexing and parsing one file, before the span is
    /// attached to its file by [`Span::in_file`].
    pub const UNSET: FileId = FileId(u32::MAX);
}

/// A byte range `start..end` in a file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            file: FileId::UNSET,
            start: start.min(u32::MAX as usize) as u32,
            end: end.min(u32::MAX as usize) as u32,
        }
    }
    pub fn at(file: FileId, start: usize, end: usize) -> Span {
        Span {
            file,
            ..Span::new(start, end)
        }
    }
    pub fn in_file(self, file: FileId) -> Span {
        if self.file == FileId::UNSET {
            Span { file, ..self }
        } else {
            self
        }
    }
    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}
