//! What every request shares: the configuration, the resolved size limit, the tokens, the
//! uploads in memory and the cap on bodies received at once. Its own file so that the
//! request modules reach it without importing back from `server`'s root.

use super::config::Config;
use super::store::Capabilities;
use super::{auth, receiving, uploads};

/// Shared by every request.
pub(crate) struct App {
    pub config: Config,
    /// The largest upload accepted: `Config::max_size`, or the default derived at start-up.
    pub max_size: u64,
    /// What the store can do beyond the core: what the server advertises and serves.
    pub capabilities: Capabilities,
    pub tokens: Option<auth::Tokens>,
    pub uploads: uploads::Uploads,
    pub receiving: receiving::Receiving,
}
