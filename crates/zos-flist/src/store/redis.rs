//! `zdb://` and `redis://`: blocks as values of a Redis-protocol server, keyed by the raw id.
//! A 0-db namespace (`zdb://host/ns`) is chosen with `SELECT ns [password]` on every new
//! connection, as 0-db expects; for `redis://host/N`, `SELECT N` picks the database.

use super::{strip_password, Store, StoreError, StorePolicy};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub(super) struct RedisStore {
    target: Target,
    select: Option<(String, Option<String>)>,
    idle: Mutex<Vec<redis::Connection>>,
    url: String,
}

/// Where connections go.
enum Target {
    /// As the URL says: no policy, or a unix socket the policy already allowed.
    Fixed(redis::Client),
    /// Under a policy: the host is resolved at each connection, every address checked, and
    /// only a checked address connected to.
    Checked {
        host: String,
        port: u16,
        /// `user:pass@` or `user@` or nothing.
        auth: String,
        policy: Arc<StorePolicy>,
    },
}

impl RedisStore {
    pub(super) fn new(
        url: &url::Url,
        policy: Option<Arc<StorePolicy>>,
    ) -> Result<Self, StoreError> {
        let display = strip_password(url.as_str());
        let bad = |reason: String| StoreError::BadUrl {
            url: display.clone(),
            reason,
        };
        let zdb = url.scheme() == "zdb";
        let selector = url.path().trim_matches('/').to_owned();
        let password = url.password().map(str::to_owned);
        let (connect, select, checked) = match url.host_str() {
            Some(host) if !host.is_empty() => {
                let port = url.port().unwrap_or(if zdb { 9900 } else { 6379 });
                let user = url.username();
                // 0-db takes a namespace password as the argument of SELECT, not AUTH.
                let auth = match (&password, zdb && !selector.is_empty()) {
                    (Some(p), false) => format!("{user}:{p}@"),
                    (None, false) if !user.is_empty() => format!("{user}@"),
                    _ => String::new(),
                };
                let select = (!selector.is_empty()).then(|| {
                    let pass = if zdb { password.clone() } else { None };
                    (selector.clone(), pass)
                });
                let checked = policy.map(|policy| Target::Checked {
                    // The brackets of an IPv6 literal are URL syntax, not part of the name.
                    host: host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port,
                    auth: auth.clone(),
                    policy,
                });
                (format!("redis://{auth}{host}:{port}/"), select, checked)
            }
            _ => {
                if url.path().is_empty() {
                    return Err(bad(
                        "expected host[:port][/namespace] or an absolute socket path".into(),
                    ));
                }
                (format!("redis+unix://{}", url.path()), None, None)
            }
        };
        if !zdb {
            if let Some((db, _)) = &select {
                db.parse::<u32>()
                    .map_err(|_| bad(format!("redis database {db:?} is not a number")))?;
            }
        }
        let client = redis::Client::open(connect.as_str()).map_err(|e| bad(e.to_string()))?;
        Ok(RedisStore {
            target: checked.unwrap_or(Target::Fixed(client)),
            select,
            idle: Mutex::new(Vec::new()),
            url: display,
        })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// A new connection: to the URL's host, or under a policy to the first checked address
    /// of this resolution that answers.
    fn open_connection(&self) -> Result<redis::Connection, StoreError> {
        let (host, port, auth, policy) = match &self.target {
            Target::Fixed(client) => {
                return client
                    .get_connection_with_timeout(CONNECT_TIMEOUT)
                    .map_err(|e| self.unavailable(e))
            }
            Target::Checked {
                host,
                port,
                auth,
                policy,
            } => (host, *port, auth, policy),
        };
        let mut last = None;
        for addr in policy.resolve(&self.url, host, port)? {
            // SocketAddr prints IPv6 in brackets, as a URL wants it.
            let client = redis::Client::open(format!("redis://{auth}{addr}/"))
                .map_err(|e| self.unavailable(e))?;
            match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => self.unavailable(e),
            None => self.unavailable(format!("{host} resolves to no address")),
        })
    }

    fn connect(&self) -> Result<redis::Connection, StoreError> {
        let mut conn = self.open_connection()?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|_| conn.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| self.unavailable(e))?;
        if let Some((ns, pass)) = &self.select {
            let mut cmd = redis::cmd("SELECT");
            cmd.arg(ns);
            if let Some(p) = pass {
                cmd.arg(p);
            }
            cmd.query::<()>(&mut conn)
                .map_err(|e| self.unavailable(format!("select namespace {ns}: {e}")))?;
        }
        Ok(conn)
    }

    /// Runs one command on a pooled connection. A connection that errored is dropped rather
    /// than returned, so a restarted server gets fresh connections.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = f(&mut conn).map_err(|e| self.unavailable(e))?;
        if let Ok(mut p) = self.idle.lock() {
            p.push(conn);
        }
        Ok(out)
    }
}

impl Store for RedisStore {
    fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let value: Option<Vec<u8>> = self.with_conn(|c| redis::cmd("GET").arg(&id[..]).query(c))?;
        match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(StoreError::NotFound {
                store: self.url.clone(),
            }),
        }
    }

    fn set(&self, id: &[u8; 32], data: &[u8]) -> Result<(), StoreError> {
        self.with_conn(|c| redis::cmd("SET").arg(&id[..]).arg(data).query::<()>(c))
    }

    fn exists(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        self.with_conn(|c| redis::cmd("EXISTS").arg(&id[..]).query::<bool>(c))
    }

    fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_a_policy_each_connection_resolves_and_checks_first() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = url::Url::parse(&format!("redis://localhost:{port}")).unwrap();
        // Made directly, past the check StoreSpec::open_with makes first: the connection
        // checks on its own, as it must when a name resolves elsewhere the second time.
        let store = RedisStore::new(&url, Some(Arc::new(StorePolicy::default()))).unwrap();
        match store.get(&[0; 32]) {
            Err(StoreError::Refused { reason, .. }) => {
                assert!(reason.contains("loopback"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            listener.accept().is_err(),
            "a connection reached the refused address"
        );
    }
}
