//! Client authentication: bearer tokens from a file, each with a role.
//!
//! The token file (`--auth-tokens FILE`) holds one token per line, stored hashed:
//!
//! ```text
//! # name      role       sha256 of the token, hex
//! alice       readwrite  2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//! ```
//!
//! `raft-kv token NAME ROLE` makes a random token and prints it with its line. SHA-256 without a
//! salt or a slow KDF is enough because the tokens are 256 random bits, not passwords: nobody can
//! guess one from its hash (the same reasoning as GitHub's and etcd's hashed API tokens).
//!
//! | route                                   | needs        |
//! |-----------------------------------------|--------------|
//! | `GET /health`                           | nothing      |
//! | `GET /metrics`                          | nothing, or `read` with `--metrics-auth` |
//! | `/v1/raft/*` (peer RPCs)                | nothing here: `node::peer_auth` signs them |
//! | `GET /v1/kv/...`, `GET /v1/cluster`, `GET /v1/state-hash` | `read` |
//! | `PUT`/`DELETE /v1/kv/...`               | `readwrite`  |
//! | `POST /v1/cluster/transfer-leader`, anything else | `admin` (deny by default) |
//!
//! No or an unknown token answers 401 with `WWW-Authenticate: Bearer`; a token whose role is too
//! low answers 403. The file is re-read on SIGHUP (revocation: delete the line, send SIGHUP); a
//! file that no longer parses keeps the tokens in force and logs the error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hyper::Method;

/// Most tokens in one file.
pub const TOKENS_COUNT_MAX: usize = 10_000;
/// Largest token file.
pub const TOKEN_FILE_BYTES_MAX: usize = 4 << 20;

/// What a token may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads keys and cluster state.
    Read,
    /// Reads and writes keys.
    ReadWrite,
    /// Everything, including membership and leadership transfer.
    Admin,
}

impl Role {
    /// Parses `read`, `readwrite` or `admin`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "readwrite" => Some(Role::ReadWrite),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The name used in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        }
    }
}

/// The hex SHA-256 of a token, as the token file stores it.
pub fn token_hash_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    crate::hex::encode(digest.as_ref())
}

/// One token's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The name on the token's line (for logs).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// The parsed token file: principals by token hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenTable {
    by_hash: BTreeMap<String, Principal>,
}

impl TokenTable {
    /// Parses a token file's text; the error names the bad line.
    pub fn parse(text: &str) -> Result<TokenTable, String> {
        let mut by_hash = BTreeMap::new();
        for (line_index, line) in text.lines().enumerate() {
            let line_number = line_index + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(format!(
                    "line {line_number}: expected `name role sha256-hex`, found {} fields",
                    fields.len()
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!("line {line_number}: role {role:?} is not read, readwrite or admin")
            })?;
            let hash = hash.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "line {line_number}: the token hash must be 64 hex digits (SHA-256)"
                ));
            }
            let principal = Principal {
                name: name.to_string(),
                role,
            };
            if by_hash.insert(hash, principal).is_some() {
                return Err(format!(
                    "line {line_number}: this token hash is listed twice"
                ));
            }
            if by_hash.len() > TOKENS_COUNT_MAX {
                return Err(format!("more than {TOKENS_COUNT_MAX} tokens"));
            }
        }
        if by_hash.is_empty() {
            return Err("the token file lists no token: nobody could use the node".into());
        }
        Ok(TokenTable { by_hash })
    }

    /// The holder of `token`, if it is listed.
    pub fn principal(&self, token: &str) -> Option<&Principal> {
        self.by_hash.get(&token_hash_hex(token))
    }
}

/// Reads and parses a token file through the seam.
pub async fn load_token_file(path: &Path) -> Result<TokenTable, String> {
    let bytes = crate::env::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    if bytes.len() > TOKEN_FILE_BYTES_MAX {
        return Err(format!(
            "the token file {} is over {TOKEN_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("the token file {} is not UTF-8", path.display()))?;
    TokenTable::parse(text).map_err(|e| format!("token file {}: {e}", path.display()))
}

/// What the HTTP layer checks: the tokens in force and whether `/metrics` needs one.
#[derive(Debug)]
pub struct ClientAuth {
    tokens: RwLock<Arc<TokenTable>>,
    /// Where the tokens came from (re-read on reload; `None`: given directly, never reloaded).
    pub path: Option<PathBuf>,
    /// `/metrics` needs a `read` token.
    pub metrics_protected: bool,
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed header, or a token not in the file: 401.
    Unauthenticated(&'static str),
    /// A known token whose role is below `needed`: 403.
    Forbidden {
        /// The token's holder.
        name: String,
        /// Its role.
        role: Role,
        /// The role the request needs.
        needed: Role,
    },
}

impl ClientAuth {
    /// Auth with `tokens`, loaded from `path`.
    pub fn new(tokens: TokenTable, path: Option<PathBuf>, metrics_protected: bool) -> ClientAuth {
        ClientAuth {
            tokens: RwLock::new(Arc::new(tokens)),
            path,
            metrics_protected,
        }
    }

    /// Re-reads the token file; on an error the tokens in force stay.
    pub async fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Err("the tokens were not read from a file".into());
        };
        let table = load_token_file(path).await?;
        let count = table.by_hash.len();
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
        Ok(count)
    }

    /// The holder of the valid token in `authorization`, if any (who a rate limit counts).
    pub fn holder(&self, authorization: Option<&hyper::header::HeaderValue>) -> Option<String> {
        let token = bearer_token(authorization).ok()?;
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens
            .principal(token)
            .map(|principal| principal.name.clone())
    }

    /// Whether a request for `path` with `method` carrying `authorization` may proceed.
    pub fn check(
        &self,
        path: &str,
        method: &Method,
        authorization: Option<&hyper::header::HeaderValue>,
    ) -> Result<(), Denied> {
        let Some(needed) = required_role(path, method, self.metrics_protected) else {
            return Ok(());
        };
        let token = bearer_token(authorization)?;
        let tokens = Arc::clone(
            &self
                .tokens
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let principal = tokens
            .principal(token)
            .ok_or(Denied::Unauthenticated("the token is not valid"))?;
        // The plant lets any known token do anything (issue 11: roles).
        if principal.role >= needed || crate::plants::active(crate::plants::Plant::SkipRoleCheck) {
            Ok(())
        } else {
            Err(Denied::Forbidden {
                name: principal.name.clone(),
                role: principal.role,
                needed,
            })
        }
    }
}

fn bearer_token(authorization: Option<&hyper::header::HeaderValue>) -> Result<&str, Denied> {
    let value = authorization.ok_or(Denied::Unauthenticated(
        "this request needs `Authorization: Bearer <token>`",
    ))?;
    let text = value
        .to_str()
        .map_err(|_| Denied::Unauthenticated("the Authorization header is not ASCII"))?;
    let (scheme, token) = text.split_once(' ').ok_or(Denied::Unauthenticated(
        "the Authorization header is not `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Denied::Unauthenticated(
            "the Authorization header is not `Bearer <token>`",
        ));
    }
    Ok(token.trim())
}

/// The role a request needs, or `None` for an open route. Unknown routes need `admin`, so a
/// route added later is closed until someone decides otherwise.
pub fn required_role(path: &str, method: &Method, metrics_protected: bool) -> Option<Role> {
    match path {
        "/health" => None,
        "/metrics" => metrics_protected.then_some(Role::Read),
        "/v1/raft/hello" | "/v1/raft/messages" | "/v1/raft/snapshot" => None,
        "/v1/cluster" | "/v1/state-hash" if method == Method::GET => Some(Role::Read),
        // Listing members is a read; adding, promoting and removing them is `admin` (below).
        _ if path.starts_with("/v1/cluster/members") && method == Method::GET => Some(Role::Read),
        // Granting, keeping alive and revoking leases change state that clients own, as writes
        // do; a transaction may write.
        _ if path == "/v1/leases" || path.starts_with("/v1/leases/") || path == "/v1/txn" => {
            if method == Method::GET {
                Some(Role::Read)
            } else if method == Method::POST || method == Method::DELETE {
                Some(Role::ReadWrite)
            } else {
                Some(Role::Admin)
            }
        }
        _ if path == "/v1/kv" || path.starts_with("/v1/kv/") => {
            if method == Method::GET {
                Some(Role::Read)
            } else if method == Method::PUT || method == Method::DELETE {
                Some(Role::ReadWrite)
            } else {
                Some(Role::Admin)
            }
        }
        _ => Some(Role::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn file_line(name: &str, role: &str, token: &str) -> String {
        format!("{name} {role} {}\n", token_hash_hex(token))
    }

    fn auth() -> ClientAuth {
        let text = [
            "# comment\n".to_string(),
            file_line("reader", "read", "tok-read"),
            file_line("writer", "readwrite", "tok-write"),
            file_line("root", "admin", "tok-admin"),
        ]
        .concat();
        let table = TokenTable::parse(&text).expect("a valid file");
        ClientAuth::new(table, None, true)
    }

    #[test]
    fn sha256_of_a_known_string_matches_the_standard_vector() {
        assert_eq!(
            token_hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_file_stores_hashes_so_a_hash_is_not_a_token() {
        let auth = auth();
        let hash = token_hash_hex("tok-admin");
        let header = HeaderValue::from_str(&format!("Bearer {hash}")).unwrap();
        assert!(matches!(
            auth.check("/v1/kv/a", &Method::GET, Some(&header)),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn bad_token_files_are_refused_with_the_line() {
        let hash = token_hash_hex("t");
        for (text, needle) in [
            (format!("a superuser {hash}"), "line 1: role"),
            (
                format!("a read {hash}\nb read {hash}"),
                "line 2: this token hash",
            ),
            ("a read 1234".to_string(), "64 hex digits"),
            ("a read".to_string(), "found 2 fields"),
            ("# nobody\n".to_string(), "lists no token"),
        ] {
            let error = TokenTable::parse(&text).unwrap_err();
            assert!(
                error.contains(needle),
                "{error:?} should mention {needle:?}"
            );
        }
    }

    #[test]
    fn unknown_routes_need_admin_and_health_is_open() {
        assert_eq!(required_role("/health", &Method::GET, true), None);
        assert_eq!(required_role("/metrics", &Method::GET, false), None);
        assert_eq!(
            required_role("/v1/members", &Method::POST, false),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role("/v1/kv/a", &Method::PATCH, false),
            Some(Role::Admin)
        );
    }

    #[test]
    fn malformed_authorization_headers_are_unauthenticated() {
        let auth = auth();
        for value in ["tok-read", "Basic tok-read", "Bearer ", "Bearer  "] {
            let header = HeaderValue::from_str(value).unwrap();
            assert!(
                matches!(
                    auth.check("/v1/kv/a", &Method::GET, Some(&header)),
                    Err(Denied::Unauthenticated(_))
                ),
                "{value:?}"
            );
        }
    }
}
