//! The domain core: decisions and formats that know nothing of Kubernetes
//! I/O. The controller and the token server both build on these, so they
//! always agree on what a grant, a valid secret or a due rotation is.

pub mod api_token;
pub mod client_secret;
pub mod duration;
pub mod federation;
pub mod grant;
pub mod grant_error;
pub mod pod_ca;
pub mod podcert;
pub mod policy;
pub mod roles;
pub mod rotation;
pub mod scope;
pub mod sender;
pub mod verifier;
pub mod workload;
