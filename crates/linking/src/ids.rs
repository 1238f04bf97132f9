//! The ids of accounts and users are defined in `ponte_identity::ids` (the lowest crate
//! that needs them: sessions, refresh families and codes carry them); re-exported here so
//! the linking domain names them where it owns them.

pub use ponte_identity::ids::{AccountId, UserId};

ponte_identity::entity_id!(
    /// Identifies a company (a legal entity or point of sale) of an account.
    CompanyId
);
ponte_identity::entity_id!(
    /// Identifies a collaboration invite.
    InviteId
);
ponte_identity::entity_id!(
    /// Identifies a seat grant (additional-user licences bought for an account).
    SeatGrantId
);
