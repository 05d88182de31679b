//! Static bearer tokens from a file, as kube-apiserver's `--token-auth-file` reads it
//! (staging/src/k8s.io/apiserver/plugin/pkg/authenticator/token/tokenfile): CSV rows of
//! `token,user,uid[,"group1,group2,..."]`; every user is also in `system:authenticated`. The
//! file is read at start, like kube-apiserver's.

use std::path::Path;

use super::{TokenEntry, UserInfo, authn::AUTHENTICATED};

/// Errors of reading a token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the token file {path}")]
    Read {
        path: String,
        #[source]
        source: csv::Error,
    },
    #[error("token file {path}, line {line}: {why}")]
    Row {
        path: String,
        line: u64,
        why: &'static str,
    },
}

/// The tokens of the CSV file at `path`.
pub fn read(path: &Path) -> Result<Vec<TokenEntry>, TokenFileError> {
    let shown = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_path(path)
        .map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
    let mut out: Vec<TokenEntry> = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let line = row.position().map_or(0, csv::Position::line);
        let bad = |why| TokenFileError::Row {
            path: shown.clone(),
            line,
            why,
        };
        if row.len() < 3 {
            return Err(bad("a row needs token, user and uid"));
        }
        let (token, user) = (&row[0], &row[1]);
        if token.is_empty() || user.is_empty() {
            return Err(bad("empty token or user"));
        }
        if out.iter().any(|e| e.token == token) {
            // kube-apiserver warns and keeps the last; a repeated token is a mistake either way.
            return Err(bad("the token is repeated"));
        }
        let mut groups: Vec<String> = row
            .get(3)
            .into_iter()
            .flat_map(|g| g.split(','))
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_owned());
        }
        out.push(TokenEntry {
            token: token.to_owned(),
            user: UserInfo {
                name: user.to_owned(),
                groups,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<TokenEntry>, TokenFileError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, text).expect("write");
        read(&path)
    }

    #[test]
    fn rows_name_users_and_groups() {
        let tokens =
            parse("# ops\nt1,alice,u1,\"dev,ops\"\nt2, bob ,u2\n t3,carol,u3,system:masters\n")
                .expect("tokens");
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[0].token, "t1");
        assert_eq!(tokens[0].user.name, "alice");
        assert_eq!(
            tokens[0].user.groups,
            ["dev", "ops", "system:authenticated"]
        );
        assert_eq!(tokens[1].user.name, "bob");
        assert_eq!(tokens[1].user.groups, ["system:authenticated"]);
        assert_eq!(tokens[2].token, "t3");
    }

    #[test]
    fn bad_rows_are_refused_with_their_line() {
        let e = parse("t1,alice,u1\nt2,bob\n").expect_err("short row");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse("t1,alice,u1\nt1,bob,u2\n").is_err());
        assert!(parse(",alice,u1\n").is_err());
        assert!(read(Path::new("/nonexistent/tokens.csv")).is_err());
    }
}
