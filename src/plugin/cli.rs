//! The command line of `kubectl m2m`, following kubectl's conventions:
//! `-n/--namespace`, `-A/--all-namespaces`, `--context`, `--kubeconfig` and
//! `-o/--output` are accepted anywhere on the line.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;

/// `kubectl m2m`: status, rotation and tokens of m2m.dev credentials.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "kubectl-m2m",
    bin_name = "kubectl m2m",
    version,
    about = "Inspect, rotate and try out m2m.dev credentials (M2MCredential)",
    after_help = "Exit status: 0 on success, 1 on any error (including an invalid token signature)."
)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, named as kubectl names them.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalArgs {
    /// Namespace [default: the kubeconfig context's namespace, else `default`].
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// All namespaces (`status` only).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// The kubeconfig context to use [default: the current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Output format: a table (default), `wide` (more columns), `json` or `yaml`.
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<OutputFormat>,
}

/// `-o` values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A table with extra columns.
    Wide,
    /// A stable JSON document.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// The subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Credentials with identity, type, secret version, last use, previous
    /// versions still in their grace period, next rotation, expiry and Ready.
    Status(StatusArgs),
    /// Rotate a credential now (sets the `m2m.dev/rotate` annotation).
    Rotate(RotateArgs),
    /// Fetch an access token with a credential's Secret, read with your own
    /// kubeconfig credentials.
    Token(TokenArgs),
    /// Print a JWT's header and claims and verify its signature against the
    /// issuer's JWKS.
    Decode(DecodeArgs),
}

/// `status`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusArgs {
    /// Only this credential.
    pub name: Option<String>,
}

/// `rotate`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct RotateArgs {
    /// The M2MCredential to rotate.
    pub name: String,
    /// Wait until the new secret version is Ready, then say what happens to
    /// the previous one.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, e.g. `60s` or `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// `token`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// The M2MCredential whose Secret authenticates the request.
    pub name: String,
    /// Scope to request; repeat or separate with spaces [default: the credential's scopes].
    #[arg(long)]
    pub scope: Vec<String>,
    /// Audience (`aud`) to request [default: the issuer's default].
    #[arg(long)]
    pub audience: Option<String>,
    /// Token endpoint to use instead of the Secret's in-cluster `token_url`,
    /// e.g. `http://127.0.0.1:8080/oauth/token` after `kubectl port-forward`.
    /// A URL without a path gets `/oauth/token`.
    #[arg(long)]
    pub token_url: Option<String>,
    /// Print the token's header and claims (and verify its signature)
    /// instead of the token.
    #[arg(long)]
    pub decode: bool,
    /// JWKS to verify against with `--decode` [default: the token
    /// endpoint's `/.well-known/jwks.json`].
    #[arg(long)]
    pub jwks_url: Option<String>,
    /// Ask for a DPoP-bound token (RFC 9449): the request carries a proof
    /// of the `--dpop-key` key, and only that key's holder can use the token.
    #[arg(long)]
    pub dpop: bool,
    /// The DPoP private key (PKCS#8 PEM, P-256 or Ed25519); created (P-256,
    /// mode 0600) if the file does not exist [default: a throw-away key,
    /// which leaves the token unusable: for `--decode`].
    #[arg(long, requires = "dpop")]
    pub dpop_key: Option<std::path::PathBuf>,
}

/// `decode`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DecodeArgs {
    /// The JWT, or `-` to read it from standard input.
    pub token: String,
    /// JWKS to verify against [default: `<iss>/.well-known/jwks.json`].
    #[arg(long)]
    pub jwks_url: Option<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::core::duration::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-m2m").chain(args.iter().copied()))
    }

    #[test]
    fn kubectl_flags_are_accepted_before_and_after_the_command() {
        let a = parse(&["-n", "team-a", "status", "-o", "json"]).unwrap();
        let b = parse(&["status", "--namespace=team-a", "--output", "json"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.global.namespace.as_deref(), Some("team-a"));
        assert_eq!(a.global.output, Some(OutputFormat::Json));
        let c = parse(&["status", "-A", "--context", "prod", "--kubeconfig", "/k"]).unwrap();
        assert!(c.global.all_namespaces);
        assert_eq!(c.global.context.as_deref(), Some("prod"));
        assert_eq!(
            c.global.kubeconfig.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        assert_eq!(
            parse(&["status", "-o", "wide"]).unwrap().global.output,
            Some(OutputFormat::Wide)
        );
    }

    #[test]
    fn namespace_and_all_namespaces_conflict() {
        assert!(parse(&["status", "-A", "-n", "x"]).is_err());
    }

    #[test]
    fn unknown_output_formats_are_refused() {
        assert!(parse(&["status", "-o", "xml"]).is_err());
    }

    #[test]
    fn rotate_takes_a_go_duration_timeout() {
        let cli = parse(&["rotate", "ci", "--wait", "--timeout", "2m"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Rotate(RotateArgs {
                name: "ci".into(),
                wait: true,
                timeout: Duration::from_secs(120)
            })
        );
        let Command::Rotate(d) = parse(&["rotate", "ci"]).unwrap().command else {
            panic!("rotate")
        };
        assert_eq!(d.timeout, Duration::from_secs(60));
        assert!(!d.wait);
        assert!(parse(&["rotate", "ci", "--timeout", "soon"]).is_err());
        assert!(parse(&["rotate"]).is_err());
    }

    #[test]
    fn token_collects_scopes_and_options() {
        let cli = parse(&[
            "token",
            "ci",
            "--scope",
            "a:r",
            "--scope",
            "b:w",
            "--audience",
            "api",
            "--token-url",
            "http://127.0.0.1:8080",
            "--decode",
        ])
        .unwrap();
        let Command::Token(t) = cli.command else {
            panic!("token")
        };
        assert_eq!(t.scope, ["a:r", "b:w"]);
        assert_eq!(t.audience.as_deref(), Some("api"));
        assert_eq!(t.token_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert!(t.decode);
    }

    #[test]
    fn decode_reads_a_token_or_stdin() {
        let Command::Decode(d) = parse(&["decode", "-"]).unwrap().command else {
            panic!("decode")
        };
        assert_eq!(d.token, "-");
        assert!(parse(&["decode"]).is_err());
    }
}
