//! What every upstream flow's HTTP side shares: the browser-binding cookie and the
//! callback address (used by federation and by invite acceptance alike).

use crate::state::AppState;

/// The cookie that binds a flow to the browser that started it.
pub(crate) const BINDING: &str = "ponte_fed";

/// Where the provider sends the browser back.
pub(crate) fn redirect_uri(state: &AppState, provider: &str) -> String {
    format!("{}/federation/{provider}/callback", state.issuer())
}
