//! The reconcilers. Each lives in its own module; this one holds the
//! operator's key Secret, which the credential controller calls at start
//! and whenever [`keys::KeyReconcile::next_due`] comes.

pub mod keys;
