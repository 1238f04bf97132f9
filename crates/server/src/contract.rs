//! Schemas of request values for the OpenAPI document, as strict as the parsers behind
//! them: whatever a parser refuses, its schema does not allow. Each names the parser it
//! mirrors; a change to one needs the same change here (the contract fuzz in
//! `scripts/fuzz-contract` finds the difference).

use serde_json::{Value, json};
use utoipa::openapi::{RefOr, Schema};

/// Characters Rust's `str::trim` takes off (Unicode `White_Space`, less the control
/// characters, which no pattern here allows anyway).
const SPACE: &str = r"[ \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
/// What `char::is_control` refuses (Unicode general category Cc).
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// A JSON value as a schema. The literals below are all schemas, so the fallback (any
/// value) never shows; the document's drift test would catch it.
fn schema(value: Value) -> RefOr<Schema> {
    serde_json::from_value(value).unwrap_or_else(|_| RefOr::T(Schema::default()))
}

/// The same schema, also allowing `null`: an optional field that serde reads as absent.
fn or_null(schema: RefOr<Schema>) -> RefOr<Schema> {
    let mut value = serde_json::to_value(&schema).unwrap_or_default();
    if let Some(t) = value.get("type").cloned() {
        value["type"] = json!([t, "null"]);
    }
    serde_json::from_value(value).unwrap_or(schema)
}

/// Text that is trimmed, then must have 1 to `max` characters and no control character
/// (`ponte_linking::account::parse_name`, `NewSeatGrant::parse`).
fn trimmed_text(max: usize, description: &str) -> RefOr<Schema> {
    let inner = max.saturating_sub(2);
    let pattern = format!(
        "^{SPACE}*[^{CONTROL} \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]\
         (?:[^{CONTROL}]{{0,{inner}}}[^{CONTROL} \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000])?{SPACE}*$"
    );
    schema(json!({"type": "string", "pattern": pattern, "description": description}))
}

/// A display name (`parse_name`): 1 to 200 characters once trimmed, no control characters.
pub fn name() -> RefOr<Schema> {
    trimmed_text(200, "1 to 200 characters (surrounding spaces are trimmed), no control characters.")
}

/// A POS order reference (`NewSeatGrant::parse`).
pub fn order_reference() -> RefOr<Schema> {
    trimmed_text(
        100,
        "The POS order (unique within the account): 1 to 100 characters once trimmed, no control characters.",
    )
}

/// An email address (`ponte_linking::email::Email::parse`), in the plain ASCII form the
/// contract promises: 1 to 64 characters before the `@`, a domain of at least two labels.
pub fn email() -> RefOr<Schema> {
    schema(json!({
        "type": "string",
        "maxLength": 254,
        "pattern": r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$",
        "description": "Email address (unique across Ponte, case-insensitively).",
    }))
}

/// A password set by an administrator (`ponte_identity::password::check_policy`).
pub fn password() -> RefOr<Schema> {
    schema(json!({"type": "string", "minLength": 10, "maxLength": 256, "description": "10 to 256 characters."}))
}

/// The language of a user's mail (`ponte_linking::account::Lang::parse`).
pub fn language() -> RefOr<Schema> {
    schema(
        json!({"type": "string", "enum": ["it", "en"], "description": "`it` or `en`: the language of the user's mail."}),
    )
}

/// The role a user may be given (`check_new_user_role`).
pub fn role() -> RefOr<Schema> {
    schema(json!({"type": "string", "enum": ["admin", "member"], "description": "`admin` or `member`."}))
}

/// The status a person may set (`UserStatus::parse`, less `suspended`, which follows seats).
pub fn user_status() -> RefOr<Schema> {
    schema(json!({
        "type": "string",
        "enum": ["active", "disabled"],
        "description": "`active` or `disabled`; disabling ends the user's sessions.",
    }))
}

/// One grant (`ponte_linking::access::Grant::parse`): a permission of the catalogue on
/// `"all"` companies or on a list of company ids; the account-wide ones on `"all"` only.
pub fn grant() -> RefOr<Schema> {
    use ponte_linking::access::Permission;
    let (account, company): (Vec<_>, Vec<_>) = Permission::ALL.into_iter().partition(|p| p.is_account_wide());
    let names = |ps: Vec<Permission>| ps.into_iter().map(Permission::as_str).collect::<Vec<_>>();
    let all = json!({"type": "string", "enum": ["all"]});
    let ids = json!({"type": "array", "minItems": 1, "items": {"type": "string", "format": "uuid"}});
    let one = |permissions: Vec<&str>, companies: Value| {
        json!({
            "type": "object",
            "required": ["permission", "companies"],
            "additionalProperties": false,
            "properties": {
                "permission": {"type": "string", "enum": permissions},
                "companies": companies,
            },
        })
    };
    schema(json!({
        "description": "A permission from the catalogue (`GET /api/v1/permissions`) on every company (`\"all\"`) \
                        or on a non-empty list of the account's company ids; an account-wide permission only on `\"all\"`.",
        "oneOf": [
            one(names(company), json!({"oneOf": [all, ids]})),
            one(names(account), all),
        ],
    }))
}

/// A member's grant list (`parse_grants`: at most 64).
pub fn grants() -> RefOr<Schema> {
    schema(json!({"type": "array", "maxItems": 64, "items": {"$ref": "#/components/schemas/GrantView"}}))
}

/// An integration kind in a path (`IntegrationKind::parse`).
pub fn integration_kind() -> RefOr<Schema> {
    schema(json!({"type": "string", "enum": ["digital_invoice"]}))
}

/// A webhook receiver id (`webhooks::rules::check_id`).
pub fn receiver_id() -> RefOr<Schema> {
    schema(json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}))
}

/// A webhook signing secret (`webhooks::rules::check_secret`).
pub fn receiver_secret() -> RefOr<Schema> {
    schema(
        json!({"type": "string", "minLength": 32, "description": "The signing secret, at least 32 characters; never shown again."}),
    )
}

/// A webhook URL (`webhooks::rules::check_url`), in the plain form the contract promises:
/// `https://` and a host name, or `http://` to a loopback address; an optional port and
/// path, no user, password or fragment.
pub fn receiver_url() -> RefOr<Schema> {
    schema(json!({
        "type": "string",
        "pattern": r"^(?:https://[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*|http://(?:127\.0\.0\.1|localhost|\[::1\]))(?::[1-9][0-9]{0,3})?(?:/[A-Za-z0-9._~/-]*)?$",
        "description": "`https://…`, or `http://` to a loopback host; no user or password in it, no fragment.",
    }))
}

/// A credential value (`integration::credentials::required`): up to 512 characters, none
/// of them control characters, not blank.
fn credential_value() -> Value {
    json!({
        "type": "string",
        "maxLength": 512,
        "pattern": format!("^[^{CONTROL}]*[^{CONTROL} \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^{CONTROL}]*$"),
    })
}

/// `PUT …/credentials` (`PlatformCredentials::parse`): one of three shapes, each with only
/// its own fields.
pub fn credentials() -> RefOr<Schema> {
    let one = |kind: &str, fields: &[&str]| {
        let mut properties = serde_json::Map::new();
        properties.insert("type".into(), json!({"type": "string", "enum": [kind]}));
        for f in fields {
            properties.insert((*f).into(), credential_value());
        }
        let mut required = vec!["type"];
        required.extend_from_slice(fields);
        json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
    };
    schema(json!({
        "description": "`{\"type\": \"username_password\", \"username\", \"password\"}`, `{\"type\": \"api_key\", \"api_key\"}` \
                        or `{\"type\": \"technical_key\", \"key\"}`; each value up to 512 characters, not blank, no control characters.",
        "oneOf": [
            one("username_password", &["username", "password"]),
            one("api_key", &["api_key"]),
            one("technical_key", &["key"]),
        ],
    }))
}

/// What `str::trim` takes off, as the body of a character class: Unicode `White_Space`,
/// control characters included (`ponte_linking::company` trims before it checks).
const TRIM: &str = r"\t\n\u000b\u000c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// A code point inside a character class: `\uXXXX`, or `\x{…}` beyond the BMP.
fn class_char(c: u32) -> String {
    if c <= 0xFFFF { format!("\\u{c:04x}") } else { format!("\\x{{{c:x}}}") }
}

/// What `ponte_identity::text::invisible` refuses, as the body of a character class.
fn invisible_class() -> String {
    ponte_identity::text::INVISIBLE
        .iter()
        .map(
            |&(low, high)| {
                if low == high { class_char(low) } else { format!("{}-{}", class_char(low), class_char(high)) }
            },
        )
        .collect()
}

/// The pattern of `company::fields::text`: trimmed, then 1 to `max` characters, none of
/// them control or invisible; `or_blank` also allows a blank string (an optional part).
fn company_text(max: usize, or_blank: bool) -> String {
    let bad = format!("{CONTROL}{}", invisible_class());
    let inner = max.saturating_sub(2);
    let text = format!("[^{bad}{TRIM}](?:[^{bad}]{{0,{inner}}}[^{bad}{TRIM}])?");
    let text = if or_blank { format!("(?:{text})?") } else { text };
    format!("^[{TRIM}]*{text}[{TRIM}]*$")
}

/// `^` blank or one of `alternatives`, around optional trimmed space `$`.
fn trimmed(alternatives: &str, or_blank: bool) -> String {
    let q = if or_blank { "?" } else { "" };
    format!("^[{TRIM}]*(?:{alternatives}){q}[{TRIM}]*$")
}

/// Seven letters or digits (`SdiCode::parse`), less the one code `code` made of `c` alone
/// (upper or lower case): `0000000` or `XXXXXXX`.
fn sdi_code_except(c: char) -> String {
    let same = if c.is_ascii_digit() {
        c.to_string()
    } else {
        format!("{}{}", c.to_ascii_uppercase(), c.to_ascii_lowercase())
    };
    let other: String = ('0'..='9').chain('A'..='Z').chain('a'..='z').filter(|x| !same.contains(*x)).collect();
    (0..7).map(|k| format!("[{same}]{{{k}}}[{other}][A-Za-z0-9]{{{}}}", 6 - k)).collect::<Vec<_>>().join("|")
}

/// A two-letter country code other than Italy (`company::fields::country`).
const FOREIGN_COUNTRY: &str = "[A-HJ-Za-hj-z][A-Za-z]|[Ii][A-SU-Za-su-z]";

/// The email pattern of [`email`], without its anchors.
fn email_body() -> String {
    let email = serde_json::to_value(email()).unwrap_or_default();
    let pattern = email["pattern"].as_str().unwrap_or_default();
    pattern.trim_start_matches('^').trim_end_matches('$').to_owned()
}

/// The address of a new company (`company::fields::Address::parse`): in Italy (the
/// country absent, blank or `IT`) a 5-digit CAP and a 2-letter province; elsewhere a
/// postal code of up to 16 characters and an optional province.
fn new_company_address() -> Value {
    let street = json!({"type": "string", "pattern": company_text(200, false), "description": "Street and number."});
    let city = json!({"type": "string", "pattern": company_text(200, false), "description": "Town or city."});
    let italy = json!({
        "title": "Italian address",
        "type": "object",
        "additionalProperties": false,
        "required": ["street", "city", "postal_code", "province"],
        "properties": {
            "street": street,
            "city": city,
            "postal_code": {"type": "string", "pattern": trimmed("[0-9]{5}", false), "description": "CAP: five digits."},
            "province": {"type": "string", "pattern": trimmed("[A-Za-z]{2}", false), "description": "The province's sigla, such as MI."},
            "country": {"type": ["string", "null"], "pattern": trimmed("[Ii][Tt]", true), "description": "`IT`, or absent."},
        },
    });
    let abroad = json!({
        "title": "Address outside Italy",
        "type": "object",
        "additionalProperties": false,
        "required": ["street", "city", "postal_code", "country"],
        "properties": {
            "street": street,
            "city": city,
            "postal_code": {"type": "string", "pattern": company_text(16, false), "description": "Up to 16 characters."},
            "province": {"type": ["string", "null"], "pattern": company_text(200, true), "description": "Optional."},
            "country": {"type": "string", "pattern": trimmed(FOREIGN_COUNTRY, false), "description": "ISO 3166-1 alpha-2, not IT."},
        },
    });
    json!({"anyOf": [italy, abroad]})
}

/// `POST …/companies` (`ponte_linking::company::CompanyData::parse`): every rule the
/// parser checks, the ones no pattern can say as named formats (`partita-iva`:
/// the check digit and the office code; `codice-fiscale`: the check digit or character
/// and the day of birth), and the delivery rules as `allOf`: an SDI code other than
/// `0000000` or a PEC address; `XXXXXXX` only with an address outside Italy.
pub fn new_company() -> RefOr<Schema> {
    let omocodia = "[0-9LMNPQRSTUVlmnpqrstuv]";
    let personal =
        format!("[A-Za-z]{{6}}{omocodia}{{2}}[ABCDEHLMPRSTabcdehlmprst]{omocodia}{{2}}[A-Za-z]{omocodia}{{3}}[A-Za-z]");
    let email = email_body();
    // The delivery rules: an SDI code other than `0000000` or a PEC; `XXXXXXX` only abroad.
    let delivery = json!([
        {"anyOf": [
            {"required": ["pec"], "properties": {"pec": {"type": "string", "pattern": format!("^{email}$")}}},
            {"required": ["sdi_code"], "properties": {"sdi_code": {"type": "string", "pattern": trimmed(&sdi_code_except('0'), false)}}},
        ]},
        {"anyOf": [
            {"properties": {"sdi_code": {"type": ["string", "null"], "pattern": trimmed(&sdi_code_except('x'), true)}}},
            {"properties": {"address": {"required": ["country"], "properties": {"country": {"type": "string", "pattern": trimmed(FOREIGN_COUNTRY, false)}}}}},
        ]},
    ]);
    let mut company = schema(json!({
        "type": "object",
        "description": "A new company: its name, Partita IVA and address, and where its invoices arrive (an SDI code, a PEC address, or both).",
        "additionalProperties": false,
        "required": ["legal_name", "vat_number", "address"],
        "properties": {
            "legal_name": {"type": "string", "pattern": company_text(200, false), "description": "Ragione sociale: 1 to 200 characters once trimmed, no control or invisible characters."},
            "vat_number": {
                "type": "string",
                "format": "partita-iva",
                "pattern": format!("^[{TRIM}]*(?:[Ii][Tt][{TRIM}]*)?[0-9]{{11}}[{TRIM}]*$"),
                "description": "Partita IVA: 11 digits, an `IT` prefix allowed; the last is the check digit, digits 8 to 10 an existing office code (001–100, 120, 121, 888, 999).",
            },
            "tax_code": {
                "type": ["string", "null"],
                "format": "codice-fiscale",
                "pattern": trimmed(&format!("[0-9]{{11}}|{personal}"), true),
                "description": "Codice fiscale: 11 digits checked like a Partita IVA, or the 16 characters of a person (omocodia letters allowed) with a valid month, day and check character; absent or blank, the Partita IVA.",
            },
            "address": new_company_address(),
            "sdi_code": {
                "type": ["string", "null"],
                "pattern": trimmed("[A-Za-z0-9]{7}", true),
                "description": "SDI recipient code: 7 letters or digits; `0000000` needs a PEC, `XXXXXXX` is for an address outside Italy.",
            },
            "pec": {
                "type": ["string", "null"],
                "maxLength": 254,
                "pattern": format!("^(?:[{TRIM}]*|{email})$"),
                "description": "PEC address where invoices arrive.",
            },
        },
    }));
    // utoipa's object schema has no `allOf` of its own: it goes in as an extension.
    if let RefOr::T(Schema::Object(object)) = &mut company {
        object.extensions.get_or_insert_with(Default::default).insert("allOf".into(), delivery);
    }
    company
}

/// The rules between fields that a plain object schema cannot say, added to the
/// document's component schemas as JSON Schema `not` clauses.
pub fn refine(openapi: &mut utoipa::openapi::OpenApi) {
    let Some(components) = openapi.components.as_mut() else { return };
    // `POST …/users`: a password or a set-password link, not both; grants only for members.
    let create_user = json!({"anyOf": [
        {"required": ["password", "send_password_link"], "properties": {"send_password_link": {"const": true}}},
        {"required": ["role", "permissions"], "properties": {"role": {"const": "admin"}, "permissions": {"minItems": 1}}},
    ]});
    if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut("CreateUser") {
        object.extensions.get_or_insert_with(Default::default).insert("not".into(), create_user);
    }
    // `PATCH …/users/{user}`: at least one field that is not `null` ("nothing to change").
    if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut("UpdateUser") {
        let fields: Vec<String> = object.properties.keys().cloned().collect();
        let some: Vec<Value> =
            fields.iter().map(|f| json!({"required": [f], "properties": {f: {"not": {"type": "null"}}}})).collect();
        object.extensions.get_or_insert_with(Default::default).insert("anyOf".into(), some.into());
    }
}

/// An optional email (`null` is absent).
pub fn email_or_null() -> RefOr<Schema> {
    or_null(email())
}

/// An optional name (`null` is absent).
pub fn name_or_null() -> RefOr<Schema> {
    or_null(name())
}

/// An optional password (`null` is absent).
pub fn password_or_null() -> RefOr<Schema> {
    or_null(password())
}

/// An optional language (`null` is absent).
pub fn language_or_null() -> RefOr<Schema> {
    or_null(language())
}

/// An optional role (`null` is absent).
pub fn role_or_null() -> RefOr<Schema> {
    or_null(role())
}

/// An optional status (`null` is absent).
pub fn user_status_or_null() -> RefOr<Schema> {
    or_null(user_status())
}

/// An optional grant list (`null` is absent).
pub fn grants_or_null() -> RefOr<Schema> {
    or_null(grants())
}

/// Form fields of `POST /oauth2/token` (RFC 6749 §4.1.3, §4.4, §6), client authentication
/// in the body or as HTTP Basic.
pub fn token_form() -> RefOr<Schema> {
    let text = json!({"type": "string"});
    schema(json!({
        "type": "object",
        "required": ["grant_type"],
        "properties": {
            "grant_type": {"type": "string", "enum": ["client_credentials", "authorization_code", "refresh_token"]},
            "client_id": text, "client_secret": text, "scope": text, "code": text,
            "redirect_uri": text, "code_verifier": text, "refresh_token": text,
        },
        // Other parameters are ignored (RFC 6749 §3.2); none may be repeated.
        "additionalProperties": {"type": "string"},
    }))
}

/// Form fields of introspection (RFC 7662) and revocation (RFC 7009).
pub fn token_use_form() -> RefOr<Schema> {
    let text = json!({"type": "string"});
    schema(json!({
        "type": "object",
        "required": ["token"],
        "properties": {"token": text, "token_type_hint": text, "client_id": text, "client_secret": text},
        "additionalProperties": {"type": "string"},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_here_is_a_schema() {
        for s in [name(), order_reference(), email(), password(), language(), role(), user_status(), grant(), grants()]
        {
            let text = serde_json::to_value(&s).unwrap_or_default();
            assert!(text.get("type").is_some() || text.get("oneOf").is_some(), "{text}");
        }
    }
}
