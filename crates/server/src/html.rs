//! Server-rendered pages: escaping, the layout, and Italian or English text.

use std::sync::OnceLock;

use actix_web::HttpRequest;
use actix_web::http::header;
use ponte_identity::secret::digest;

/// Escapes text for HTML bodies and double-quoted attributes (one escaper for pages and mail).
pub use ponte_identity::outbox::escape_html as escape;

/// The languages pages speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Italiano.
    It,
    /// English.
    En,
}

impl Lang {
    /// Picks from `Accept-Language` by quality; English when neither is asked for.
    pub fn from_request(req: &HttpRequest) -> Self {
        let header = req.headers().get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        Self::negotiate(header)
    }

    fn negotiate(accept: &str) -> Self {
        let mut best: Option<(f32, Lang)> = None;
        for item in accept.split(',') {
            let mut parts = item.trim().split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).unwrap_or(1.0);
            let lang = match tag.split('-').next() {
                Some("it") => Lang::It,
                Some("en") => Lang::En,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    /// The `lang` attribute.
    pub fn code(self) -> &'static str {
        match self {
            Lang::It => "it",
            Lang::En => "en",
        }
    }

    /// Picks the Italian or the English text.
    pub fn pick(self, it: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::It => it,
            Lang::En => en,
        }
    }
}

impl From<Lang> for ponte_identity::outbox::Lang {
    fn from(l: Lang) -> Self {
        match l {
            Lang::It => Self::It,
            Lang::En => Self::En,
        }
    }
}

/// The style sheet of every page, served at [`STYLE_PATH`] and linked, not inlined: a
/// browser fetches it once, each page is a kilobyte smaller, and the pages' CSP allows
/// styles from Ponte itself only (no `'unsafe-inline'`).
pub const STYLE: &str = "body { font-family: system-ui, sans-serif; background: #f4f5f7; color: #1d2430; margin: 0; }
main { max-width: 26rem; margin: 4rem auto; background: #fff; padding: 2rem; border-radius: 8px; box-shadow: 0 1px 3px #0002; }
h1 { font-size: 1.4rem; margin-top: 0; }
label { display: block; margin: 1rem 0 .3rem; font-weight: 600; }
input[type=email], input[type=password] { width: 100%; box-sizing: border-box; padding: .6rem; border: 1px solid #aab; border-radius: 4px; font-size: 1rem; }
button { margin-top: 1.4rem; width: 100%; padding: .7rem; background: #1f5fbf; color: #fff; border: 0; border-radius: 4px; font-size: 1rem; cursor: pointer; }
.error { background: #fdecea; color: #8a1c12; padding: .7rem; border-radius: 4px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .4rem 1rem; }
dt { font-weight: 600; }
button.secondary { background: #666; }
button.compact { width: auto; margin: 0; padding: .3rem .6rem; }
button.beside { margin-left: .5rem; padding: .2rem .6rem; }
form.inline { display: inline; }
.chain[data-linked=true] { color: #1a7f37; }
.chain[data-linked=false] { color: #8a8f98; }
";

/// Where the style sheet is served.
pub const STYLE_PATH: &str = "/assets/ponte.css";

/// The `<link>` to the style sheet, its URL versioned by the sheet's digest so that it can
/// be cached for a year and still change with a release.
fn style_link() -> &'static str {
    static LINK: OnceLock<String> = OnceLock::new();
    LINK.get_or_init(|| {
        let version = &digest(STYLE)[..12];
        format!("<link rel=\"stylesheet\" href=\"{STYLE_PATH}?v={version}\">\n")
    })
}

/// Wraps a page body in the common layout. `title` and `body` are trusted HTML.
pub fn layout(lang: Lang, title: &str, body: &str) -> String {
    let parts = [
        "<!doctype html>\n<html lang=\"",
        lang.code(),
        "\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>",
        title,
        " · Ponte</title>\n",
        style_link(),
        "</head>\n<body><main>\n",
        body,
        "\n</main></body>\n</html>",
    ];
    // One allocation of the right size (`format!` would grow the string several times).
    let mut page = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|part| page.push_str(part));
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_wraps_the_body_in_one_allocation() {
        let page = layout(Lang::It, "Accedi", "<h1>Ciao</h1>");
        assert!(page.starts_with("<!doctype html>\n<html lang=\"it\">\n<head>"), "{page}");
        let link = format!(
            "<title>Accedi · Ponte</title>\n<link rel=\"stylesheet\" href=\"/assets/ponte.css?v={}\">\n</head>",
            &digest(STYLE)[..12]
        );
        assert!(page.contains(&link), "{page}");
        assert!(!page.contains("<style"), "{page}");
        assert!(page.ends_with("<body><main>\n<h1>Ciao</h1>\n</main></body>\n</html>"));
        assert_eq!(page.capacity(), page.len(), "sized exactly, never grown");
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;");
    }

    #[test]
    fn negotiates_by_quality() {
        assert_eq!(Lang::negotiate("it-IT,it;q=0.9,en;q=0.8"), Lang::It);
        assert_eq!(Lang::negotiate("en-US,en;q=0.9,it;q=0.8"), Lang::En);
        assert_eq!(Lang::negotiate("fr-FR, it;q=0.5"), Lang::It);
        assert_eq!(Lang::negotiate("de"), Lang::En);
        assert_eq!(Lang::negotiate(""), Lang::En);
        assert_eq!(Lang::negotiate("it;q=0, en;q=0.1"), Lang::En);
    }
}
