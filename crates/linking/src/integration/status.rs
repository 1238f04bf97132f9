//! What the POS shows for an integration: the next step in words, in Italian and English.

use serde::Serialize;

use super::IntegrationState;

/// One sentence in both languages Ponte speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Words {
    /// Italiano.
    pub it: String,
    /// English.
    pub en: String,
}

/// The next step for a person looking at an integration in `state`. `invited` is the
/// masked address of the pending invite, if there is one.
pub fn next_step(state: IntegrationState, invited: Option<&str>) -> Words {
    use IntegrationState::*;
    let w = |it: &str, en: &str| Words { it: it.to_owned(), en: en.to_owned() };
    match state {
        Disabled => w(
            "Controlla i dati dell'azienda e riattiva l'integrazione.",
            "Check the company data, then reactivate the integration.",
        ),
        AwaitingConfirmation => w(
            "La piattaforma ha già un account per questa Partita IVA: premi «Continua» per collegarlo.",
            "The platform already has an account for this VAT number: press Continue to link it.",
        ),
        InvitePending => match invited {
            Some(to) => Words {
                it: format!("Accetta l'invito di collaborazione inviato a {to}, accedendo con l'ID esterno collegato."),
                en: format!("Accept the collaboration invite sent to {to}, signing in with the linked external ID."),
            },
            None => w(
                "Invia di nuovo l'invito di collaborazione: nessun invito valido è in attesa.",
                "Resend the collaboration invite: no valid invite is waiting.",
            ),
        },
        Activating => w(
            "Attivazione in corso presso la piattaforma: non serve fare nulla.",
            "The platform is activating the integration: nothing to do.",
        ),
        Active => w("L'integrazione è attiva.", "The integration is active."),
        Failed => w(
            "L'attivazione non è riuscita: controlla l'errore e riprova.",
            "The activation failed: check the error, then retry.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_a_next_step_in_both_languages() {
        for state in IntegrationState::ALL {
            let w = next_step(state, Some("m***o@esempio.it"));
            assert!(!w.it.is_empty() && !w.en.is_empty() && w.it != w.en, "{}", state.as_str());
        }
    }

    #[test]
    fn a_pending_invite_names_its_masked_address_or_asks_for_a_resend() {
        let w = next_step(IntegrationState::InvitePending, Some("m***o@esempio.it"));
        assert!(w.it.contains("m***o@esempio.it") && w.en.contains("m***o@esempio.it"));
        let w = next_step(IntegrationState::InvitePending, None);
        assert!(w.en.starts_with("Resend"), "{}", w.en);
    }
}
