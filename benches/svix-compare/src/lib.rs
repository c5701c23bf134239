//! Benchmarks only: see benches/svix.rs.
