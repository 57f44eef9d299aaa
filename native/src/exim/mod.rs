//! The Exim main-log pipeline in native code: parser, reason classifier, retry rules, correlator, and
//! the driver behind `trackdelivery parse`. The Python modules in `processors/exim/` are the reference;
//! the native path writes the same output, byte for byte.

pub mod correlator;
pub mod driver;
pub mod encode;
pub mod parser;
pub mod parser_hook;
mod parser_prefix;
mod parser_text;
mod parser_unicode;
mod parser_words;
pub mod python;
pub mod reasons;
pub mod retry;
pub mod table;
pub mod types;
