//! The live dashboard at `GET /` on the admin port: one self-contained page
//! (`dashboard.html`: inline CSS, plain JavaScript, inline SVG charts, nothing fetched but
//! `/status` once a second from the same origin). Its data goes into the DOM as text only.

/// The page, compiled into the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// Its Content-Type.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Header lines sent with it: never cached, and a Content-Security-Policy that allows only
/// the page's own inline script and style and fetches to the same origin (no external
/// script, style, image, font, frame or form target can ever load, whatever a worker id or
/// an event's text contains).
pub const HEADERS: &str = "Cache-Control: no-store\r\n\
     Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'\r\n\
     X-Content-Type-Options: nosniff\r\n\
     Referrer-Policy: no-referrer\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
            // The SVG namespace is the one URL the page names, and it is never fetched.
            let text = PAGE.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains(external), "page references {external}");
        }
    }

    #[test]
    fn page_inserts_data_as_text_only() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(sink), "page uses {sink}");
        }
        assert!(PAGE.contains("fetch('/status'"));
    }

    #[test]
    fn headers_are_well_formed_lines() {
        assert!(HEADERS.ends_with("\r\n"));
        assert!(
            HEADERS
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .all(|l| l.contains(": "))
        );
        assert_eq!(
            HEADERS.matches('\n').count(),
            HEADERS.matches("\r\n").count()
        );
    }
}
