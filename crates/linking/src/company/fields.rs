//! A company's fields as newtypes that can only hold valid values, the raw draft they are
//! parsed from, and the validated whole ([`CompanyData`]).
//!
//! Every check names the field it failed on ([`FieldError`]) in the names the API uses
//! (`vat_number`, `address.postal_code`, …), and [`CompanyData::parse`] reports all of them
//! at once so that a form can be fixed in one round trip.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::email::{Email, invisible};

/// One field that broke a rule: the field as named in the API, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The offending field, such as `vat_number` or `address.postal_code`.
    pub field: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    /// A complaint about `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// `as_str`, `Display` and `Serialize` (as the plain string) for a string newtype.
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated value, in its normalised form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

/// Trimmed text of 1..=`max` characters with no control or invisible character; `what`
/// names the thing for the message ("a legal name").
fn text(field: &'static str, what: &str, input: &str, max: usize) -> Result<String, FieldError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(FieldError::new(field, format!("{what} is required")));
    }
    if s.chars().count() > max {
        return Err(FieldError::new(field, format!("{what} is longer than {max} characters")));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || invisible(*c)) {
        return Err(FieldError::new(
            field,
            format!("{what} contains a control or invisible character (U+{:04X})", u32::from(c)),
        ));
    }
    Ok(s.to_owned())
}

/// The company's registered name (ragione sociale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalName(String);
string_newtype!(LegalName);

impl LegalName {
    /// Trims; 1 to 200 characters, none of them control or invisible.
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        text("legal_name", "a legal name", input, 200).map(Self)
    }
}

/// Checks the 11 digits shared by a Partita IVA and a company's numeric codice fiscale;
/// `Err` carries the message. `digits` must already be 11 ASCII digits.
fn check_eleven_digits(digits: &str) -> Result<(), String> {
    let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
    if d.iter().all(|&x| x == 0) {
        return Err("a number of all zeros does not exist".to_owned());
    }
    if eleven_digit_check(&d[..10]) != d[10] {
        return Err("the check digit is wrong".to_owned());
    }
    // Digits 8–10 name the tax office that issued the number: the provinces, plus the
    // codes for foreign subjects and special cases.
    let office = d[7] * 100 + d[8] * 10 + d[9];
    if !matches!(office, 1..=100 | 120 | 121 | 888 | 999) {
        return Err(format!("the office code {office:03} does not exist"));
    }
    Ok(())
}

/// The 11th digit for the first ten: odd positions as they are, even positions doubled
/// (minus 9 above 9), and the digit that brings the sum to a multiple of ten.
fn eleven_digit_check(first_ten: &[u32]) -> u32 {
    let sum: u32 = first_ten
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 0 {
                x
            } else {
                let doubled = 2 * x;
                if doubled > 9 { doubled - 9 } else { doubled }
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// An Italian VAT number (Partita IVA): 11 digits, kept without the `IT` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VatNumber(String);
string_newtype!(VatNumber);

impl VatNumber {
    /// Trims, drops an `IT` prefix, and checks the length, the check digit and the office
    /// code; the error says which rule failed.
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let bad = |m: String| FieldError::new("vat_number", m);
        let s = input.trim();
        let s = match s.get(..2) {
            Some(prefix) if prefix.eq_ignore_ascii_case("IT") => s[2..].trim_start(),
            _ => s,
        };
        if s.is_empty() {
            return Err(bad("a VAT number (Partita IVA) is required".to_owned()));
        }
        if s.len() != 11 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a Partita IVA has exactly 11 digits".to_owned()));
        }
        check_eleven_digits(s).map_err(bad)?;
        Ok(Self(s.to_owned()))
    }
}

/// Omocodia letters, standing for the digits 0..=9 where a digit would clash.
const OMOCODIA: &[u8; 10] = b"LMNPQRSTUV";
/// Birth month letters, January to December.
const MONTHS: &[u8; 12] = b"ABCDEHLMPRST";
/// Positions (0-based) of a personal codice fiscale that hold a digit or an omocodia letter.
const DIGIT_POSITIONS: [usize; 7] = [6, 7, 9, 10, 12, 13, 14];
/// Values of the characters in odd positions (1st, 3rd, …), for `0..=9` and `A..=Z`.
const ODD_DIGITS: [u32; 10] = [1, 0, 5, 7, 9, 13, 15, 17, 19, 21];
const ODD_LETTERS: [u32; 26] =
    [1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23];

/// The check letter of a personal codice fiscale, over its first 15 (uppercase, already
/// well-formed) characters, with the official odd/even tables.
fn personal_check_letter(first15: &[u8]) -> u8 {
    let sum: u32 = first15
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let odd = i % 2 == 0; // 1-based odd positions
            match (c, odd) {
                (b'0'..=b'9', true) => ODD_DIGITS[usize::from(c - b'0')],
                (b'0'..=b'9', false) => u32::from(c - b'0'),
                (_, true) => ODD_LETTERS[usize::from(c - b'A')],
                (_, false) => u32::from(c - b'A'),
            }
        })
        .sum();
    // sum % 26 < 26, so the cast cannot truncate.
    b'A' + (sum % 26) as u8
}

/// The digit a digit position holds, reading omocodia letters back.
fn omocodia_digit(c: u8) -> Option<u8> {
    if c.is_ascii_digit() { Some(c - b'0') } else { OMOCODIA.iter().position(|&l| l == c).map(|p| p as u8) }
}

/// Checks a 16-character personal codice fiscale (already uppercased); `Err` carries the message.
fn check_personal(code: &[u8]) -> Result<(), String> {
    for (i, &c) in code.iter().enumerate() {
        let ok = if DIGIT_POSITIONS.contains(&i) { omocodia_digit(c).is_some() } else { c.is_ascii_uppercase() };
        if !ok {
            let want = if DIGIT_POSITIONS.contains(&i) { "a digit (or an omocodia letter L–V)" } else { "a letter" };
            return Err(format!("character {} should be {want}", i + 1));
        }
    }
    if !MONTHS.contains(&code[8]) {
        return Err(format!("the month letter {} does not exist (A B C D E H L M P R S T)", char::from(code[8])));
    }
    // Women's days are the day plus 40.
    let day = omocodia_digit(code[9]).unwrap_or(0) * 10 + omocodia_digit(code[10]).unwrap_or(0);
    if !matches!(day, 1..=31 | 41..=71) {
        return Err(format!("the day {day:02} does not exist (01–31, or 41–71 for women)"));
    }
    if personal_check_letter(&code[..15]) != code[15] {
        return Err("the check character is wrong".to_owned());
    }
    Ok(())
}

/// An Italian tax code (codice fiscale): the 11-digit form of a company (checked like a
/// Partita IVA) or the 16-character form of a person, kept uppercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxCode(String);
string_newtype!(TaxCode);

impl TaxCode {
    /// Trims and uppercases; checks the numeric form like a Partita IVA, the personal form's
    /// pattern (omocodia letters included), month, day and check character.
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let bad = |m: String| FieldError::new("tax_code", m);
        let s = input.trim().to_ascii_uppercase();
        if s.is_empty() {
            return Err(bad("a tax code (codice fiscale) is required".to_owned()));
        }
        match s.len() {
            11 if s.bytes().all(|b| b.is_ascii_digit()) => check_eleven_digits(&s).map_err(bad)?,
            16 if s.is_ascii() => check_personal(s.as_bytes()).map_err(bad)?,
            _ => return Err(bad("a codice fiscale has 11 digits (a company) or 16 characters (a person)".to_owned())),
        }
        Ok(Self(s))
    }

    /// Whether this is the 16-character form of a person (a sole trader's code).
    pub fn is_personal(&self) -> bool {
        self.0.len() == 16
    }
}

impl From<&VatNumber> for TaxCode {
    /// A company's codice fiscale is usually its Partita IVA: the same 11 digits.
    fn from(vat: &VatNumber) -> Self {
        Self(vat.0.clone())
    }
}

/// An SDI recipient code (codice destinatario): 7 uppercase letters or digits.
/// `0000000` means "deliver to the PEC address"; `XXXXXXX` means a foreign recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdiCode(String);
string_newtype!(SdiCode);

impl SdiCode {
    /// The code that sends invoices to the recipient's PEC address instead.
    pub const VIA_PEC: &'static str = "0000000";
    /// The code for recipients outside Italy.
    pub const FOREIGN: &'static str = "XXXXXXX";

    /// Trims and uppercases; exactly 7 letters or digits.
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        let s = input.trim().to_ascii_uppercase();
        if s.is_empty() {
            return Err(FieldError::new("sdi_code", "an SDI recipient code is required"));
        }
        if s.len() != 7 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FieldError::new("sdi_code", "an SDI recipient code has exactly 7 letters or digits"));
        }
        Ok(Self(s))
    }

    /// `0000000`: invoices go to the PEC address, which must then be given.
    pub fn is_via_pec(&self) -> bool {
        self.0 == Self::VIA_PEC
    }

    /// `XXXXXXX`: a recipient outside Italy.
    pub fn is_foreign(&self) -> bool {
        self.0 == Self::FOREIGN
    }
}

/// A certified email address (PEC) where invoices can arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pec(Email);

impl Pec {
    /// Parses like any [`Email`]; errors name the field `pec`.
    pub fn parse(input: &str) -> Result<Self, FieldError> {
        Email::parse(input).map(Self).map_err(|e| match e {
            crate::Error::Invalid { message, .. } => FieldError::new("pec", message),
            other => FieldError::new("pec", other.to_string()),
        })
    }

    /// As given (trimmed).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The address underneath.
    pub fn email(&self) -> &Email {
        &self.0
    }
}

impl fmt::Display for Pec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Pec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The country an address is in when none is given.
pub const DEFAULT_COUNTRY: &str = "IT";

/// A postal address. In Italy the postal code is a 5-digit CAP and the province its
/// 2-letter sigla; elsewhere the postal code is free text of up to 16 characters and the
/// province optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    street: String,
    city: String,
    postal_code: String,
    province: Option<String>,
    country: String,
}

impl Address {
    /// Validates every part, reporting each one that is wrong.
    pub fn parse(draft: &AddressDraft) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let street = text("address.street", "a street", draft.street.as_deref().unwrap_or(""), 200);
        let city = text("address.city", "a city", draft.city.as_deref().unwrap_or(""), 200);
        let country = country(draft);
        // An unreadable country is reported on its own; the rest is checked as if abroad.
        let italy = country.as_deref().is_ok_and(|c| c == "IT");
        let postal = draft.postal_code.as_deref().unwrap_or("").trim();
        let postal_code = if italy {
            if postal.is_empty() {
                Err(FieldError::new("address.postal_code", "a postal code (CAP) is required"))
            } else if postal.len() == 5 && postal.bytes().all(|b| b.is_ascii_digit()) {
                Ok(postal.to_owned())
            } else {
                Err(FieldError::new("address.postal_code", "an Italian postal code (CAP) has exactly 5 digits"))
            }
        } else {
            text("address.postal_code", "a postal code", postal, 16)
        };
        let province_raw = draft.province.as_deref().unwrap_or("").trim();
        let province = if italy {
            if province_raw.is_empty() {
                Err(FieldError::new("address.province", "a province is required for an Italian address"))
            } else if province_raw.len() == 2 && province_raw.bytes().all(|b| b.is_ascii_alphabetic()) {
                Ok(Some(province_raw.to_ascii_uppercase()))
            } else {
                Err(FieldError::new("address.province", "an Italian province is its 2-letter sigla, such as MI"))
            }
        } else if province_raw.is_empty() {
            Ok(None)
        } else {
            text("address.province", "a province", province_raw, 200).map(Some)
        };
        let street = collect(street, &mut errors);
        let city = collect(city, &mut errors);
        let postal_code = collect(postal_code, &mut errors);
        let province = collect(province, &mut errors);
        let country = collect(country, &mut errors);
        match (street, city, postal_code, province, country) {
            (Some(street), Some(city), Some(postal_code), Some(province), Some(country)) if errors.is_empty() => {
                Ok(Self { street, city, postal_code, province, country })
            }
            _ => Err(errors),
        }
    }

    /// Street and number.
    pub fn street(&self) -> &str {
        &self.street
    }

    /// City (comune).
    pub fn city(&self) -> &str {
        &self.city
    }

    /// The CAP in Italy, the local postal code elsewhere.
    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }

    /// The province's sigla in Italy (always present there); optional elsewhere.
    pub fn province(&self) -> Option<&str> {
        self.province.as_deref()
    }

    /// ISO 3166-1 alpha-2, uppercase.
    pub fn country(&self) -> &str {
        &self.country
    }

    /// Whether the address is in Italy.
    pub fn is_italian(&self) -> bool {
        self.country == "IT"
    }
}

/// The draft's country: uppercase, [`DEFAULT_COUNTRY`] when absent.
fn country(draft: &AddressDraft) -> Result<String, FieldError> {
    match draft.country.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(DEFAULT_COUNTRY.to_owned()),
        // Any two letters: the list of assigned codes changes and is not ours to keep.
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => Ok(c.to_ascii_uppercase()),
        Some(_) => Err(FieldError::new("address.country", "a country is a 2-letter ISO 3166-1 code such as IT or DE")),
    }
}

/// Keeps the value, or records the error and gives `None`.
fn collect<T>(result: Result<T, FieldError>, errors: &mut Vec<FieldError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// An address as submitted, nothing checked yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressDraft {
    /// Street and number.
    pub street: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Postal code (CAP in Italy).
    pub postal_code: Option<String>,
    /// Province (sigla in Italy).
    pub province: Option<String>,
    /// ISO 3166-1 alpha-2; `IT` when absent.
    pub country: Option<String>,
}

/// A company as submitted (create or patch), nothing checked yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanyDraft {
    /// Registered name.
    pub legal_name: Option<String>,
    /// Partita IVA, with or without `IT`.
    pub vat_number: Option<String>,
    /// Codice fiscale; defaults to the Partita IVA's digits.
    pub tax_code: Option<String>,
    /// SDI recipient code; in a patch, `""` clears it.
    pub sdi_code: Option<String>,
    /// PEC address; in a patch, `""` clears it.
    pub pec: Option<String>,
    /// Address; in a patch, only the parts given replace the current ones.
    pub address: Option<AddressDraft>,
}

/// A company's validated data: each field valid on its own and the delivery rules
/// (SDI code and PEC) met together.
///
/// Serialises as `{legal_name, vat_number, tax_code, address: {street, city, postal_code,
/// province, country}, sdi_code, pec}`, absent values as `null`; deserialising the same
/// shape validates it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompanyData {
    legal_name: LegalName,
    vat_number: VatNumber,
    tax_code: TaxCode,
    address: Address,
    sdi_code: Option<SdiCode>,
    pec: Option<Pec>,
}

/// The draft's value for an optional field: `None` when absent or blank.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.trim().is_empty())
}

impl CompanyData {
    /// Validates a whole draft, collecting every field error.
    ///
    /// Required: `legal_name`, `vat_number` and the `address` (street, city, and in Italy
    /// postal code and province). `tax_code` may be left out (or blank): a company's codice
    /// fiscale is usually its Partita IVA, so it then defaults to the VAT number's 11 digits.
    /// Invoices must be able to arrive: an `sdi_code`, a `pec`, or both; `0000000` only with
    /// a PEC, and `XXXXXXX` (a foreign recipient) only with an address outside Italy.
    pub fn parse(draft: &CompanyDraft) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let legal_name = collect(LegalName::parse(draft.legal_name.as_deref().unwrap_or("")), &mut errors);
        let vat_number = collect(VatNumber::parse(draft.vat_number.as_deref().unwrap_or("")), &mut errors);
        let tax_code = match given(&draft.tax_code) {
            Some(raw) => collect(TaxCode::parse(raw), &mut errors),
            None => vat_number.as_ref().map(TaxCode::from),
        };
        let address = match &draft.address {
            None => {
                errors.push(FieldError::new("address", "an address is required"));
                None
            }
            Some(a) => Address::parse(a).map_err(|e| errors.extend(e)).ok(),
        };
        let sdi_code = given(&draft.sdi_code).map(SdiCode::parse).transpose();
        let pec = given(&draft.pec).map(Pec::parse).transpose();
        let sdi_code = collect(sdi_code, &mut errors);
        let pec = collect(pec, &mut errors);

        // Delivery rules, judged only on what parsed, so one mistake is reported once.
        if given(&draft.sdi_code).is_none() && given(&draft.pec).is_none() {
            errors.push(FieldError::new("sdi_code", "invoices need an SDI recipient code or a PEC address"));
        }
        if let Some(Some(sdi)) = &sdi_code {
            if sdi.is_via_pec() && given(&draft.pec).is_none() {
                errors.push(FieldError::new("pec", "an SDI code of 0000000 needs a PEC address"));
            }
            // The country decides even when another part of the address is wrong.
            let in_italy = draft.address.as_ref().is_some_and(|a| country(a).is_ok_and(|c| c == "IT"));
            if sdi.is_foreign() && in_italy {
                errors.push(FieldError::new(
                    "sdi_code",
                    "the SDI code XXXXXXX is for foreign recipients, but the address is in Italy",
                ));
            }
        }

        match (legal_name, vat_number, tax_code, address, sdi_code, pec) {
            (Some(legal_name), Some(vat_number), Some(tax_code), Some(address), Some(sdi_code), Some(pec))
                if errors.is_empty() =>
            {
                Ok(Self { legal_name, vat_number, tax_code, address, sdi_code, pec })
            }
            _ => Err(errors),
        }
    }

    /// This data with the draft's present fields replacing the current ones (address parts
    /// one by one), validated again as a whole. `""` for `pec` or `sdi_code` clears it;
    /// `""` for `tax_code` sets it back to the VAT number.
    pub fn patched(&self, patch: &CompanyDraft) -> Result<Self, Vec<FieldError>> {
        let mut merged = self.to_draft();
        let over = |current: &mut Option<String>, new: &Option<String>| {
            if new.is_some() {
                current.clone_from(new);
            }
        };
        over(&mut merged.legal_name, &patch.legal_name);
        over(&mut merged.vat_number, &patch.vat_number);
        over(&mut merged.tax_code, &patch.tax_code);
        over(&mut merged.sdi_code, &patch.sdi_code);
        over(&mut merged.pec, &patch.pec);
        if let (Some(current), Some(new)) = (merged.address.as_mut(), patch.address.as_ref()) {
            over(&mut current.street, &new.street);
            over(&mut current.city, &new.city);
            over(&mut current.postal_code, &new.postal_code);
            over(&mut current.province, &new.province);
            over(&mut current.country, &new.country);
        }
        Self::parse(&merged)
    }

    /// The draft that parses back into this data.
    pub fn to_draft(&self) -> CompanyDraft {
        let a = &self.address;
        CompanyDraft {
            legal_name: Some(self.legal_name.as_str().to_owned()),
            vat_number: Some(self.vat_number.as_str().to_owned()),
            tax_code: Some(self.tax_code.as_str().to_owned()),
            sdi_code: self.sdi_code.as_ref().map(|s| s.as_str().to_owned()),
            pec: self.pec.as_ref().map(|p| p.as_str().to_owned()),
            address: Some(AddressDraft {
                street: Some(a.street.clone()),
                city: Some(a.city.clone()),
                postal_code: Some(a.postal_code.clone()),
                province: a.province.clone(),
                country: Some(a.country.clone()),
            }),
        }
    }

    /// Registered name.
    pub fn legal_name(&self) -> &LegalName {
        &self.legal_name
    }

    /// Partita IVA.
    pub fn vat_number(&self) -> &VatNumber {
        &self.vat_number
    }

    /// Codice fiscale.
    pub fn tax_code(&self) -> &TaxCode {
        &self.tax_code
    }

    /// Address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// SDI recipient code, if any.
    pub fn sdi_code(&self) -> Option<&SdiCode> {
        self.sdi_code.as_ref()
    }

    /// PEC address, if any.
    pub fn pec(&self) -> Option<&Pec> {
        self.pec.as_ref()
    }
}

impl<'de> Deserialize<'de> for CompanyData {
    /// Reads the serialised shape through [`CompanyData::parse`], so stored data that no
    /// longer passes the rules is an error, never a value.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let draft = CompanyDraft::deserialize(deserializer)?;
        Self::parse(&draft).map_err(|errors| serde::de::Error::custom(describe(&errors)))
    }
}

/// "field: message; field: message", for logs and problem details.
pub fn describe(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed Partita IVA for the first ten digits, its check digit computed here
    /// (the textbook way: Luhn over the 11 digits sums to a multiple of ten).
    fn piva(first_ten: &str) -> String {
        assert_eq!(first_ten.len(), 10);
        let digits: Vec<u32> = first_ten.chars().map(|c| c.to_digit(10).expect("a digit")).collect();
        for check in 0..10 {
            let luhn: u32 = digits
                .iter()
                .chain(std::iter::once(&check))
                .rev()
                .enumerate()
                .map(|(i, &d)| if i % 2 == 1 { (2 * d) / 10 + (2 * d) % 10 } else { d })
                .sum();
            if luhn.is_multiple_of(10) {
                return format!("{first_ten}{check}");
            }
        }
        unreachable!("one of ten check digits always fits")
    }

    /// A personal codice fiscale for its first 15 characters, the check letter computed
    /// from the published tables written out again here.
    fn cf(first15: &str) -> String {
        let odd = |c: char| -> u32 {
            // The odd-position table inverted: the letter at index v is worth v; a digit
            // is worth what the letter in its place (0 = A, 1 = B, …) is.
            let table = "BAKPLCQDREVOSFTGUHMINJWZYX";
            let letter = if c.is_ascii_digit() { (b'A' + c.to_digit(10).expect("digit") as u8) as char } else { c };
            table.find(letter).expect("in table") as u32
        };
        let even = |c: char| -> u32 { c.to_digit(10).unwrap_or_else(|| c as u32 - 'A' as u32) };
        let sum: u32 = first15.chars().enumerate().map(|(i, c)| if i % 2 == 0 { odd(c) } else { even(c) }).sum();
        format!("{first15}{}", (b'A' + (sum % 26) as u8) as char)
    }

    fn message<T: fmt::Debug>(r: Result<T, FieldError>, field: &str) -> String {
        let e = r.expect_err("should be refused");
        assert_eq!(e.field, field);
        e.message
    }

    fn draft() -> CompanyDraft {
        CompanyDraft {
            legal_name: Some("Pizzeria Da Gino S.r.l.".into()),
            vat_number: Some("IT00743110157".into()),
            tax_code: None,
            sdi_code: Some("m5uxcr1".into()),
            pec: None,
            address: Some(AddressDraft {
                street: Some("Via Roma 1".into()),
                city: Some("Milano".into()),
                postal_code: Some("20121".into()),
                province: Some("mi".into()),
                country: None,
            }),
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&'static str> {
        errors.iter().map(|e| e.field).collect()
    }

    #[test]
    fn legal_name_is_trimmed_and_refuses_empty_long_and_invisible_text() {
        assert_eq!(LegalName::parse("  Bar Sport S.n.c. ").unwrap().as_str(), "Bar Sport S.n.c.");
        assert!(LegalName::parse(&"à".repeat(200)).is_ok());
        assert!(message(LegalName::parse("   "), "legal_name").contains("required"));
        assert!(message(LegalName::parse(&"a".repeat(201)), "legal_name").contains("200"));
        assert!(message(LegalName::parse("Bar\u{202E}Sport"), "legal_name").contains("U+202E"));
        assert!(message(LegalName::parse("Bar\nSport"), "legal_name").contains("U+000A"));
    }

    #[test]
    fn real_partite_iva_pass_and_the_it_prefix_is_dropped() {
        for real in ["00743110157", "00488410010", "00905811006"] {
            assert_eq!(VatNumber::parse(real).unwrap().as_str(), real);
        }
        assert_eq!(VatNumber::parse(" IT00743110157 ").unwrap().as_str(), "00743110157");
        assert_eq!(VatNumber::parse("it 00743110157").unwrap().as_str(), "00743110157");
        assert_eq!(VatNumber::parse("00743110157").unwrap().to_string(), "00743110157");
        assert_eq!(serde_json::to_value(VatNumber::parse("IT00743110157").unwrap()).unwrap(), "00743110157");
    }

    #[test]
    fn generated_partite_iva_pass_for_every_existing_office() {
        for office in ["001", "058", "100", "120", "121", "888", "999"] {
            let number = piva(&format!("1234567{office}"));
            assert!(VatNumber::parse(&number).is_ok(), "{number}");
        }
    }

    #[test]
    fn a_wrong_check_digit_is_named() {
        // 00743110157 with its last digit changed.
        assert_eq!(message(VatNumber::parse("00743110158"), "vat_number"), "the check digit is wrong");
        // Two neighbours swapped: the doubling catches it.
        assert_eq!(message(VatNumber::parse("07043110157"), "vat_number"), "the check digit is wrong");
    }

    #[test]
    fn an_office_code_that_does_not_exist_is_named() {
        let office_150 = piva("1234567150");
        assert_eq!(message(VatNumber::parse(&office_150), "vat_number"), "the office code 150 does not exist");
        // A popular placeholder: its check digit is right, its office 789 is not.
        assert_eq!(message(VatNumber::parse("01234567897"), "vat_number"), "the office code 789 does not exist");
        assert_eq!(message(VatNumber::parse(&piva("1234567000")), "vat_number"), "the office code 000 does not exist");
    }

    #[test]
    fn malformed_partite_iva_are_refused() {
        assert!(message(VatNumber::parse("00000000000"), "vat_number").contains("all zeros"));
        for bad in ["0074311015", "007431101570", "0074311015A", "DE00743110157", "IT", "007 4311 0157"] {
            assert!(VatNumber::parse(bad).is_err(), "{bad}");
        }
        assert!(message(VatNumber::parse(""), "vat_number").contains("required"));
    }

    #[test]
    fn personal_tax_codes_pass_with_their_check_letter_and_in_omocodia_form() {
        assert_eq!(cf("RSSMRA85T10A562"), "RSSMRA85T10A562S");
        assert_eq!(TaxCode::parse("rssmra85t10a562s").unwrap().as_str(), "RSSMRA85T10A562S");
        assert!(TaxCode::parse("RSSMRA85T10A562S").unwrap().is_personal());
        // Omocodia: digits replaced by L–V from the right; each variant has its own check letter.
        assert_eq!(cf("RSSMRA85T10A56N"), "RSSMRA85T10A56NH");
        for first15 in ["RSSMRA85T10A56N", "RSSMRA85T10ARSN", "RSSMRA85T1LARSN", "RSSMRAURTMLARSN"] {
            let code = cf(first15);
            assert!(TaxCode::parse(&code).is_ok(), "{code}");
        }
        // A woman's day (10 + 40) is a day too.
        assert!(TaxCode::parse(&cf("RSSMRA85T50A562")).is_ok());
    }

    #[test]
    fn personal_tax_codes_with_wrong_parts_are_refused_naming_the_part() {
        assert_eq!(message(TaxCode::parse("RSSMRA85T10A562T"), "tax_code"), "the check character is wrong");
        assert_eq!(message(TaxCode::parse("RSSMRA85T10A56NS"), "tax_code"), "the check character is wrong");
        assert!(message(TaxCode::parse(&cf("RSSMRA85F10A562")), "tax_code").contains("month letter F"));
        assert!(message(TaxCode::parse(&cf("RSSMRA85T35A562")), "tax_code").contains("day 35"));
        assert!(message(TaxCode::parse(&cf("RSSMRA8WT10A562")), "tax_code").contains("character 8"));
        assert!(message(TaxCode::parse(&cf("RSSMR185T10A562")), "tax_code").contains("character 6"));
        assert!(TaxCode::parse("RSSMRA85T10A562").is_err());
    }

    #[test]
    fn numeric_tax_codes_are_checked_like_a_partita_iva() {
        let code = TaxCode::parse("00743110157").unwrap();
        assert!(!code.is_personal());
        assert_eq!(message(TaxCode::parse("00743110158"), "tax_code"), "the check digit is wrong");
        assert_eq!(message(TaxCode::parse(&piva("1234567150")), "tax_code"), "the office code 150 does not exist");
    }

    #[test]
    fn sdi_codes_are_seven_letters_or_digits_uppercased() {
        let code = SdiCode::parse(" m5uxcr1 ").unwrap();
        assert_eq!(code.as_str(), "M5UXCR1");
        assert!(!code.is_via_pec() && !code.is_foreign());
        assert!(SdiCode::parse("0000000").unwrap().is_via_pec());
        assert!(SdiCode::parse("xxxxxxx").unwrap().is_foreign());
        for bad in ["M5UXCR", "M5UXCR12", "M5UX-R1", "M5UXCRà"] {
            assert_eq!(
                message(SdiCode::parse(bad), "sdi_code"),
                "an SDI recipient code has exactly 7 letters or digits"
            );
        }
    }

    #[test]
    fn pec_is_an_email_whose_errors_name_pec() {
        assert_eq!(Pec::parse(" gino@pec.it ").unwrap().as_str(), "gino@pec.it");
        assert!(message(Pec::parse("gino"), "pec").contains("@"));
    }

    #[test]
    fn italian_addresses_need_a_cap_and_a_province_sigla() {
        let a = Address::parse(&draft().address.unwrap()).unwrap();
        assert_eq!((a.postal_code(), a.province(), a.country()), ("20121", Some("MI"), "IT"));
        let bad = AddressDraft {
            street: Some(" ".into()),
            city: None,
            postal_code: Some("2012".into()),
            province: Some("Milano".into()),
            country: Some("it".into()),
        };
        let errors = Address::parse(&bad).unwrap_err();
        assert_eq!(fields(&errors), ["address.street", "address.city", "address.postal_code", "address.province"]);
        let no_province = AddressDraft { province: None, ..draft().address.unwrap() };
        assert_eq!(fields(&Address::parse(&no_province).unwrap_err()), ["address.province"]);
    }

    #[test]
    fn foreign_addresses_take_local_postal_codes_and_no_province() {
        let berlin = AddressDraft {
            street: Some("Unter den Linden 1".into()),
            city: Some("Berlin".into()),
            postal_code: Some("10117".into()),
            province: None,
            country: Some("de".into()),
        };
        let a = Address::parse(&berlin).unwrap();
        assert_eq!((a.country(), a.province(), a.is_italian()), ("DE", None, false));
        let london =
            AddressDraft { postal_code: Some("SW1A 1AA".into()), country: Some("GB".into()), ..berlin.clone() };
        assert!(Address::parse(&london).is_ok());
        let too_long = AddressDraft { postal_code: Some("1".repeat(17)), ..berlin.clone() };
        assert_eq!(fields(&Address::parse(&too_long).unwrap_err()), ["address.postal_code"]);
        let bad_country = AddressDraft { country: Some("DEU".into()), ..berlin };
        assert_eq!(fields(&Address::parse(&bad_country).unwrap_err()), ["address.country"]);
    }

    #[test]
    fn a_company_with_an_sdi_code_parses_and_its_tax_code_defaults_to_the_vat_number() {
        let company = CompanyData::parse(&draft()).unwrap();
        assert_eq!(company.vat_number().as_str(), "00743110157");
        assert_eq!(company.tax_code().as_str(), "00743110157");
        assert_eq!(company.sdi_code().map(SdiCode::as_str), Some("M5UXCR1"));
        assert_eq!(company.pec(), None);
        let sole_trader = CompanyDraft { tax_code: Some("RSSMRA85T10A562S".into()), ..draft() };
        assert_eq!(CompanyData::parse(&sole_trader).unwrap().tax_code().as_str(), "RSSMRA85T10A562S");
    }

    #[test]
    fn invoices_must_be_able_to_arrive() {
        let nowhere = CompanyDraft { sdi_code: None, pec: None, ..draft() };
        assert_eq!(fields(&CompanyData::parse(&nowhere).unwrap_err()), ["sdi_code"]);
        let pec_only = CompanyDraft { sdi_code: None, pec: Some("gino@pec.it".into()), ..draft() };
        assert!(CompanyData::parse(&pec_only).is_ok());
    }

    #[test]
    fn sdi_code_0000000_needs_a_pec() {
        let without = CompanyDraft { sdi_code: Some("0000000".into()), pec: None, ..draft() };
        let errors = CompanyData::parse(&without).unwrap_err();
        assert_eq!(errors, [FieldError::new("pec", "an SDI code of 0000000 needs a PEC address")]);
        let with = CompanyDraft { pec: Some("gino@pec.it".into()), ..without };
        let company = CompanyData::parse(&with).unwrap();
        assert!(company.sdi_code().unwrap().is_via_pec());
        assert_eq!(company.pec().unwrap().as_str(), "gino@pec.it");
    }

    #[test]
    fn sdi_code_xxxxxxx_is_only_for_addresses_abroad() {
        let italian = CompanyDraft { sdi_code: Some("XXXXXXX".into()), ..draft() };
        let errors = CompanyData::parse(&italian).unwrap_err();
        assert_eq!(fields(&errors), ["sdi_code"]);
        assert!(errors[0].message.contains("foreign"), "{}", errors[0].message);
        let abroad = CompanyDraft {
            address: Some(AddressDraft {
                street: Some("Rue de Rivoli 1".into()),
                city: Some("Paris".into()),
                postal_code: Some("75001".into()),
                province: None,
                country: Some("FR".into()),
            }),
            ..italian
        };
        assert!(CompanyData::parse(&abroad).unwrap().sdi_code().unwrap().is_foreign());
    }

    #[test]
    fn every_wrong_field_is_reported_at_once() {
        let mess = CompanyDraft {
            legal_name: Some("".into()),
            vat_number: Some("00743110158".into()),
            tax_code: Some("RSSMRA85T10A562T".into()),
            sdi_code: Some("123".into()),
            pec: Some("not-an-address".into()),
            address: Some(AddressDraft { postal_code: Some("ABCDE".into()), ..draft().address.unwrap() }),
        };
        let errors = CompanyData::parse(&mess).unwrap_err();
        assert_eq!(fields(&errors), ["legal_name", "vat_number", "tax_code", "address.postal_code", "sdi_code", "pec"]);
        assert!(
            describe(&errors).contains("vat_number: the check digit is wrong; tax_code: the check character is wrong")
        );
        let empty = CompanyData::parse(&CompanyDraft::default()).unwrap_err();
        assert_eq!(fields(&empty), ["legal_name", "vat_number", "address", "sdi_code"]);
    }

    #[test]
    fn serialises_in_the_agreed_shape_and_reads_it_back_validated() {
        let company = CompanyData::parse(&draft()).unwrap();
        let json = serde_json::to_value(&company).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "legal_name": "Pizzeria Da Gino S.r.l.",
                "vat_number": "00743110157",
                "tax_code": "00743110157",
                "address": {"street": "Via Roma 1", "city": "Milano", "postal_code": "20121", "province": "MI", "country": "IT"},
                "sdi_code": "M5UXCR1",
                "pec": null,
            })
        );
        let back: CompanyData = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, company);
        let mut tampered = json;
        tampered["vat_number"] = "00743110158".into();
        let e = serde_json::from_value::<CompanyData>(tampered).unwrap_err();
        assert!(e.to_string().contains("vat_number: the check digit is wrong"), "{e}");
    }

    #[test]
    fn drafts_refuse_unknown_fields() {
        assert!(serde_json::from_str::<CompanyDraft>(r#"{"legal_name": "x", "vat": "1"}"#).is_err());
        assert!(serde_json::from_str::<CompanyDraft>(r#"{"address": {"zip": "20121"}}"#).is_err());
    }

    #[test]
    fn a_patch_replaces_only_the_fields_it_names() {
        let company = CompanyData::parse(&draft()).unwrap();
        let patch = CompanyDraft {
            pec: Some("gino@pec.it".into()),
            address: Some(AddressDraft { street: Some("Corso Como 5".into()), ..AddressDraft::default() }),
            ..CompanyDraft::default()
        };
        let patched = company.patched(&patch).unwrap();
        assert_eq!(patched.pec().unwrap().as_str(), "gino@pec.it");
        assert_eq!(patched.address().street(), "Corso Como 5");
        assert_eq!(patched.address().city(), "Milano");
        assert_eq!(patched.address().postal_code(), "20121");
        assert_eq!(patched.legal_name(), company.legal_name());
        assert_eq!(patched.sdi_code(), company.sdi_code());
        assert_eq!(company.patched(&CompanyDraft::default()).unwrap(), company);
    }

    #[test]
    fn a_patch_can_clear_the_sdi_code_or_pec_but_the_whole_is_validated_again() {
        let both = CompanyData::parse(&CompanyDraft { pec: Some("gino@pec.it".into()), ..draft() }).unwrap();
        let pec_only =
            both.patched(&CompanyDraft { sdi_code: Some(String::new()), ..CompanyDraft::default() }).unwrap();
        assert_eq!(pec_only.sdi_code(), None);
        let nowhere = pec_only.patched(&CompanyDraft { pec: Some(String::new()), ..CompanyDraft::default() });
        assert_eq!(fields(&nowhere.unwrap_err()), ["sdi_code"]);
        // Moving the company to Italy while it says "foreign recipient" breaks the rule.
        let abroad = CompanyData::parse(&CompanyDraft {
            sdi_code: Some("XXXXXXX".into()),
            address: Some(AddressDraft {
                street: Some("Rue de Rivoli 1".into()),
                city: Some("Paris".into()),
                postal_code: Some("75001".into()),
                province: None,
                country: Some("FR".into()),
            }),
            ..draft()
        })
        .unwrap();
        let moved = abroad.patched(&CompanyDraft {
            address: Some(AddressDraft { country: Some("IT".into()), ..AddressDraft::default() }),
            ..CompanyDraft::default()
        });
        assert_eq!(fields(&moved.unwrap_err()), ["address.province", "sdi_code"]);
        let bad_vat = both.patched(&CompanyDraft { vat_number: Some(piva("1234567150")), ..CompanyDraft::default() });
        assert_eq!(fields(&bad_vat.unwrap_err()), ["vat_number"]);
    }
}
