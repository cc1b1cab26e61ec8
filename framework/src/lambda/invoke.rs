//! Invoking a Lambda function asynchronously, the one AWS call room workers need: an
//! HTTP POST to the Invoke API, signed with Signature Version 4 from the credentials
//! Lambda gives every function. No AWS SDK: this is one request.

use crate::token::hex;
use crate::{Error, Result};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A function and the version or alias to run (`name:qualifier`, as AWS writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionVersion {
    /// The function's name (or ARN).
    pub function: String,
    /// A version number or an alias; `None` for `$LATEST`.
    pub qualifier: Option<String>,
}

impl FunctionVersion {
    /// Parses `name`, `name:qualifier` or a function ARN with or without a qualifier.
    pub fn parse(s: &str) -> FunctionVersion {
        // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]
        let parts: Vec<&str> = s.split(':').collect();
        let (function, qualifier) = if s.starts_with("arn:") {
            match parts.len() {
                8 => (parts[..7].join(":"), Some(parts[7].to_owned())),
                _ => (s.to_owned(), None),
            }
        } else {
            match s.split_once(':') {
                Some((name, q)) => (name.to_owned(), Some(q.to_owned())),
                None => (s.to_owned(), None),
            }
        };
        FunctionVersion {
            function,
            qualifier: qualifier.filter(|q| !q.is_empty() && q != "$LATEST"),
        }
    }
}

impl fmt::Display for FunctionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.qualifier {
            Some(q) => write!(f, "{}:{q}", self.function),
            None => f.write_str(&self.function),
        }
    }
}

/// AWS credentials, as Lambda puts them in a function's environment.
#[derive(Clone)]
pub struct Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Sends asynchronous invocations (`X-Amz-Invocation-Type: Event`).
#[derive(Debug, Clone)]
pub struct Invoker {
    http: reqwest::Client,
    /// `https://lambda.REGION.amazonaws.com`, or an emulator's address.
    endpoint: String,
    region: String,
    credentials: Option<Credentials>,
    /// How long to wait for the answer. AWS answers an asynchronous invoke at once; an
    /// emulator that runs every invoke synchronously is left to run it.
    wait: Duration,
}

impl Invoker {
    /// From the environment: `AWS_REGION`, the `AWS_*` credentials, and
    /// `GSL_LAMBDA_ENDPOINT` to use another endpoint than AWS's (an emulator such as
    /// `cargo lambda watch`, which needs no credentials).
    pub fn from_env() -> Invoker {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = var("GSL_LAMBDA_ENDPOINT")
            .unwrap_or_else(|| format!("https://lambda.{region}.amazonaws.com"));
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key), Some(secret_key)) => Some(Credentials {
                access_key,
                secret_key,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => None,
        };
        Invoker {
            http: reqwest::Client::new(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            region,
            credentials,
            wait: Duration::from_secs(3),
        }
    }

    /// Queues an invocation of `target` with `payload`. Returns once Lambda has
    /// accepted it (or, from an emulator that runs invocations synchronously, once it
    /// has had a few seconds: it still runs it).
    pub async fn invoke_event(
        &self,
        target: &FunctionVersion,
        payload: &serde_json::Value,
    ) -> Result<()> {
        let body = serde_json::to_vec(payload).map_err(|e| Error::Protocol(e.to_string()))?;
        let path = format!(
            "/2015-03-31/functions/{}/invocations",
            uri_encode(&target.function, true)
        );
        let query = target
            .qualifier
            .as_ref()
            .map(|q| format!("Qualifier={}", uri_encode(q, true)))
            .unwrap_or_default();
        let url = match query.is_empty() {
            true => format!("{}{path}", self.endpoint),
            false => format!("{}{path}?{query}", self.endpoint),
        };
        let host = url::Url::parse(&url)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| u.port().map_or(h.to_owned(), |p| format!("{h}:{p}")))
            })
            .ok_or_else(|| Error::Invalid(format!("a bad Lambda endpoint: {}", self.endpoint)))?;
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), host),
            ("x-amz-invocation-type".to_owned(), "Event".to_owned()),
        ];
        let mut request = self.http.post(&url).body(body.clone());
        if let Some(credentials) = &self.credentials {
            let now = amz_date(SystemTime::now());
            headers.push(("x-amz-date".into(), now.clone()));
            if let Some(token) = &credentials.session_token {
                headers.push(("x-amz-security-token".into(), token.clone()));
            }
            let authorization = sign(&SigningInput {
                method: "POST",
                path: &path,
                query: &query,
                headers: &headers,
                body: &body,
                credentials,
                region: &self.region,
                service: "lambda",
                amz_date: &now,
            });
            request = request.header("authorization", authorization);
        }
        for (name, value) in &headers {
            if name != "host" {
                request = request.header(name, value);
            }
        }
        match tokio::time::timeout(self.wait, request.send()).await {
            Err(_) => {
                tracing::debug!(%target, "invoke: no answer in {:?}; taken as queued", self.wait);
                Ok(())
            }
            Ok(Err(e)) => Err(Error::Protocol(format!("cannot invoke {target}: {e}"))),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => {
                let status = response.status();
                Err(Error::Refused {
                    message: format!("Lambda refused to invoke {target}: {status}"),
                    detail: response.text().await.unwrap_or_default(),
                })
            }
        }
    }
}

/// What Signature Version 4 signs.
struct SigningInput<'a> {
    method: &'a str,
    /// The path, already URI-encoded.
    path: &'a str,
    /// The query string, already in canonical form (sorted, encoded).
    query: &'a str,
    /// Lower-case names; every one of them is signed.
    headers: &'a [(String, String)],
    body: &'a [u8],
    credentials: &'a Credentials,
    region: &'a str,
    service: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    amz_date: &'a str,
}

/// The `Authorization` header for a request (AWS Signature Version 4).
fn sign(input: &SigningInput<'_>) -> String {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    // Outside S3, each path segment is encoded twice: once in the URL, once here.
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        input.method,
        uri_encode(input.path, false),
        input.query,
        hex(&Sha256::digest(input.body))
    );
    let date = &input.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(
        &input.credentials.secret_key,
        date,
        input.region,
        input.service,
    );
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        input.credentials.access_key
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// URI-encodes as SigV4 wants: everything but unreserved characters (and `/` unless
/// `slash` says to encode it too).
fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The calendar date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials() -> Credentials {
        Credentials {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// The worked example of AWS's Signature Version 4 documentation (IAM ListUsers).
    #[test]
    fn signs_the_documented_example() {
        assert_eq!(
            hex(&signing_key(
                &example_credentials().secret_key,
                "20150830",
                "us-east-1",
                "iam"
            )),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let headers = [
            (
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            ),
            ("Host".to_owned(), "iam.amazonaws.com".to_owned()),
            ("X-Amz-Date".to_owned(), "20150830T123600Z".to_owned()),
        ];
        let authorization = sign(&SigningInput {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
            credentials: &example_credentials(),
            region: "us-east-1",
            service: "iam",
            amz_date: "20150830T123600Z",
        });
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn dates_and_targets() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30 12:36:00
        assert_eq!(amz_date(t), "20150830T123600Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(amz_date(t), "20000229T000000Z");

        assert_eq!(
            FunctionVersion::parse("worker:live"),
            FunctionVersion {
                function: "worker".into(),
                qualifier: Some("live".into())
            }
        );
        assert_eq!(FunctionVersion::parse("worker").qualifier, None);
        assert_eq!(FunctionVersion::parse("worker:$LATEST").qualifier, None);
        let arn = "arn:aws:lambda:eu-west-1:123456789012:function:worker:7";
        let t = FunctionVersion::parse(arn);
        assert_eq!(
            t.function,
            "arn:aws:lambda:eu-west-1:123456789012:function:worker"
        );
        assert_eq!(t.qualifier.as_deref(), Some("7"));
        assert_eq!(t.to_string(), arn);
        assert_eq!(uri_encode("a b/c:d", true), "a%20b%2Fc%3Ad");
    }
}
