//! Placeholder while the schema test is written.
