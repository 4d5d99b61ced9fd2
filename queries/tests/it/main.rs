//! Integration tests of the query layer over real Delta tables in temp dirs.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod fixtures;
mod formats;
mod helpers;
mod http;
#[cfg(feature = "postgres")]
mod postgres;
mod safety;
mod scope;
mod tail;
mod views;
