//! API tests: a real runtime on 127.0.0.1:0 over a real log and metadata store in a temp dir,
//! driven through HTTP as a user would. One module per resource.

mod connectors;
mod dedup;
mod errors;
mod grpc;
mod grpc_errors;
mod ops;
mod publish;
mod replicas;
mod support;
mod topic_lifecycle;
mod topics;
