//! Receive Cariosan webhooks.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod model;
pub mod verify;
