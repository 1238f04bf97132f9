//! Ponte's integration suite, one binary: storage and session suites on every backend
//! available, and the HTTP service started in-process on a free port.
//!
//! SQLite and the in-process session store always run. PostgreSQL, Redis and a Redis
//! Cluster run when `PONTE_TEST_DATABASE_URL` / `PONTE_TEST_REDIS_URL` /
//! `PONTE_TEST_REDIS_CLUSTER_URL` are set (CI sets all three; with `CI` set, their absence
//! is a failure rather than a skip).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod access;
mod api;
mod cluster;
mod credentials;
mod directory;
mod errors;
mod federation;
mod hostile_input;
mod integrations;
mod invites;
mod jobs;
mod login;
mod mail;
mod oauth;
mod oidc;
mod openapi;
mod ops;
mod platform;
mod process;
mod proxy;
mod recovery;
mod resilience;
mod seats;
mod session_cache;
mod sessions;
mod shutdown;
mod sink;
mod storage;
mod webhooks;
