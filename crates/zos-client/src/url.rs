//! Where a node listens: a unix socket, `https://HOST:PORT` (TLS, the node's default on TCP)
//! or `http://HOST:PORT` (a node configured with `?insecure`).

use std::fmt;
use std::path::PathBuf;

/// Where `zos node run` listens unless configured otherwise.
pub const DEFAULT_NODE: &str = "unix:///run/zos/node.sock";

/// A node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUrl {
    /// `unix:///abs/path.sock`.
    Unix(PathBuf),
    /// `https://HOST:PORT` or `http://HOST:PORT`.
    Http {
        /// TLS (`https`), checked against the node's id.
        tls: bool,
        /// `HOST:PORT` as written, for the `Host` header.
        authority: String,
        /// The host without IPv6 brackets, for connecting.
        host: String,
        /// The port (443 or 80 when left out).
        port: u16,
    },
}

impl NodeUrl {
    /// Parses `unix:///abs/path.sock`, `https://HOST[:PORT]` or `http://HOST[:PORT]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        const FORMS: &str = "use unix:///absolute/path.sock, https://HOST:PORT or http://HOST:PORT";
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: the socket path must be absolute, as in unix:///run/zos/node.sock"
                ));
            }
            return Ok(NodeUrl::Unix(PathBuf::from(path)));
        }
        let (tls, rest) = match (s.strip_prefix("https://"), s.strip_prefix("http://")) {
            (Some(rest), _) => (true, Some(rest)),
            (None, rest) => (false, rest),
        };
        if let Some(rest) = rest {
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
                return Err(format!(
                    "{s:?}: give only the host and port, as in https://10.0.0.5:8080"
                ));
            }
            let parsed: hyper::http::uri::Authority = authority
                .parse()
                .map_err(|e| format!("{s:?}: {e}; {FORMS}"))?;
            let host = parsed.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            return Ok(NodeUrl::Http {
                tls,
                authority: authority.to_string(),
                host: host.to_string(),
                port: parsed.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            });
        }
        Err(format!("{s:?} is not a node address; {FORMS}"))
    }

    /// The `Host` header to send.
    pub(crate) fn host_header(&self) -> &str {
        match self {
            // Any name will do over a socket; the node does not route by host.
            NodeUrl::Unix(_) => "localhost",
            NodeUrl::Http { authority, .. } => authority,
        }
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeUrl::Unix(path) => write!(f, "unix://{}", path.display()),
            NodeUrl::Http { authority, tls, .. } => {
                let scheme = if *tls { "https" } else { "http" };
                write!(f, "{scheme}://{authority}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls() {
        assert_eq!(
            NodeUrl::parse("unix:///run/zos/node.sock").unwrap(),
            NodeUrl::Unix("/run/zos/node.sock".into())
        );
        let http = NodeUrl::parse("http://[::1]:8080/").unwrap();
        assert_eq!(
            http,
            NodeUrl::Http {
                tls: false,
                authority: "[::1]:8080".into(),
                host: "::1".into(),
                port: 8080
            }
        );
        assert_eq!(http.to_string(), "http://[::1]:8080");
        assert!(matches!(
            NodeUrl::parse("http://node.example").unwrap(),
            NodeUrl::Http { port: 80, .. }
        ));
        let err = |s| NodeUrl::parse(s).unwrap_err();
        assert!(err("unix://run/zos.sock").contains("must be absolute"));
        assert!(err("http://h:1/v1").contains("only the host and port"));
        let https = NodeUrl::parse("https://127.0.0.1:7700").unwrap();
        assert!(matches!(
            https,
            NodeUrl::Http {
                tls: true,
                port: 7700,
                ..
            }
        ));
        assert_eq!(https.to_string(), "https://127.0.0.1:7700");
        assert!(matches!(
            NodeUrl::parse("https://node.example").unwrap(),
            NodeUrl::Http { port: 443, .. }
        ));
        assert!(err("h:1").contains("unix:///absolute/path.sock, https://HOST:PORT"));
    }
}
