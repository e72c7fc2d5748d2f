//! Answers River writes itself: files, the welcome page, short status pages.

pub mod file_server;
pub mod respond;
pub mod welcome;
