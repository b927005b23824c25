//! `shimmer owners`: which mirrors own these images, as Shimmie would link them.
//!
//! ```text
//! shimmer owners [--algorithm rendezvous|flexihash] --template TEMPLATE HASH...
//! shimmer owners --template TEMPLATE - < hashes.txt
//! ```
//!
//! One line per hash: `HASH PRIMARY SECONDARY URL`, `-` for a missing primary
//! (unbalanced template) or secondary; URL is the primary's link with `$hash`,
//! `$hash_ab` and `$hash_cd` filled in (other variables stay as written). With `-` as
//! the only HASH, hashes are read from stdin, one per line (blank lines skipped,
//! `\r\n` accepted), and results are streamed. A bad template or hash exits 2 with a
//! one-line reason on stderr; lines before a bad one have already been printed.

use crate::fleet::{Algorithm, FleetError, Owners, Placement, Template};
use std::io::{self, BufRead, BufWriter, Write};
use std::process::ExitCode;

/// Arguments of `shimmer owners`.
#[derive(clap::Args, Debug, Clone)]
pub struct OwnersArgs {
    /// Placement algorithm: rendezvous (Shimmie >= 2.12) or flexihash (Shimmie <= 2.11).
    #[arg(long, default_value_t = Algorithm::Rendezvous, value_name = "rendezvous|flexihash")]
    pub algorithm: Algorithm,

    /// Link template, e.g. 'https://m-{a=5,b=5,c=10}.example.com/_images/$hash/x.jpg'.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: String,

    /// Image hashes (32 lowercase hex digits), or `-` alone to read them from stdin.
    #[arg(value_name = "HASH", required = true)]
    pub hashes: Vec<String>,
}

/// Exit code for bad input (as clap uses for bad arguments).
const BAD_INPUT: u8 = 2;

/// Why the command stopped early.
#[derive(Debug, thiserror::Error)]
enum OwnersError {
    #[error("bad template: {0}")]
    Template(#[from] FleetError),
    #[error("{0}")]
    Hash(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Runs `shimmer owners`.
pub fn run(args: OwnersArgs) -> ExitCode {
    let stdout = io::stdout();
    let stdin = io::stdin();
    let result = execute(&args, &mut stdin.lock(), &mut stdout.lock());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `shimmer owners - | head` is fine.
        Err(OwnersError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shimmer owners: {e}");
            match e {
                OwnersError::Io(_) => ExitCode::FAILURE,
                _ => ExitCode::from(BAD_INPUT),
            }
        }
    }
}

fn execute<R: BufRead, W: Write>(
    args: &OwnersArgs,
    input: &mut R,
    output: W,
) -> Result<(), OwnersError> {
    let placement = Placement::new(Template::parse(&args.template)?, args.algorithm)?;
    let mut out = BufWriter::with_capacity(1 << 16, output);
    if let [only] = args.hashes.as_slice() {
        if only == "-" {
            stream(&placement, input, &mut out)?;
            out.flush()?;
            return Ok(());
        }
    }
    // Check every argument before printing anything.
    for (i, hash) in args.hashes.iter().enumerate() {
        check_hash(hash.as_bytes())
            .map_err(|why| OwnersError::Hash(format!("argument {}: {why}", i + 1)))?;
    }
    for hash in &args.hashes {
        write_line(&placement, hash, &mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// Reads hashes line by line into one reused buffer.
fn stream<R: BufRead, W: Write>(
    placement: &Placement,
    input: &mut R,
    out: &mut W,
) -> Result<(), OwnersError> {
    let mut line = Vec::with_capacity(64);
    let mut number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        let mut hash = line.as_slice();
        if let Some(rest) = hash.strip_suffix(b"\n") {
            hash = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        if hash.is_empty() {
            continue;
        }
        let hash = check_hash(hash)
            .map_err(|why| OwnersError::Hash(format!("stdin line {number}: {why}")))?;
        write_line(placement, hash, out)?;
    }
}

/// A Shimmie image hash: 32 lowercase hex digits.
fn check_hash(bytes: &[u8]) -> Result<&str, String> {
    let ok = bytes.len() == 32 && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
        return Err(format!(
            "invalid hash {shown:?}: expected 32 lowercase hex digits"
        ));
    }
    // All ASCII, so this cannot fail.
    std::str::from_utf8(bytes).map_err(|e| e.to_string())
}

fn write_line<W: Write>(placement: &Placement, hash: &str, out: &mut W) -> io::Result<()> {
    let owners = placement.owners(hash);
    let (primary, secondary) = match owners {
        Owners::Unbalanced => (None, None),
        Owners::Nodes { primary, secondary } => (Some(primary), secondary),
    };
    out.write_all(hash.as_bytes())?;
    out.write_all(b" ")?;
    out.write_all(primary.unwrap_or("-").as_bytes())?;
    out.write_all(b" ")?;
    out.write_all(secondary.unwrap_or("-").as_bytes())?;
    out.write_all(b" ")?;
    placement.template().write_link(out, primary, hash)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "https://m-{a=5,b=5,c=10}.example.com/_images/$hash/x.jpg";

    fn args(algorithm: Algorithm, template: &str, hashes: &[&str]) -> OwnersArgs {
        OwnersArgs {
            algorithm,
            template: template.to_owned(),
            hashes: hashes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn run_with(a: &OwnersArgs, stdin: &str) -> (Result<(), OwnersError>, String) {
        let mut out = Vec::new();
        let r = execute(a, &mut stdin.as_bytes(), &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn prints_primary_secondary_and_link() {
        let a = args(
            Algorithm::Rendezvous,
            T,
            &[
                "d41d8cd98f00b204e9800998ecf8427e",
                "098f6bcd4621d373cade4e832627b4f6",
            ],
        );
        let (r, out) = run_with(&a, "");
        assert!(r.is_ok());
        assert_eq!(
            out,
            "d41d8cd98f00b204e9800998ecf8427e c b https://m-c.example.com/_images/d41d8cd98f00b204e9800998ecf8427e/x.jpg\n\
             098f6bcd4621d373cade4e832627b4f6 c a https://m-c.example.com/_images/098f6bcd4621d373cade4e832627b4f6/x.jpg\n"
        );
    }

    #[test]
    fn flexihash_algorithm_is_used() {
        let a = args(
            Algorithm::Flexihash,
            T,
            &["d41d8cd98f00b204e9800998ecf8427e"],
        );
        let (_, out) = run_with(&a, "");
        assert!(out.starts_with("d41d8cd98f00b204e9800998ecf8427e b a https://m-b."));
    }

    #[test]
    fn missing_secondary_and_unbalanced_print_dashes() {
        let a = args(
            Algorithm::Rendezvous,
            "{solo}/$hash",
            &["d41d8cd98f00b204e9800998ecf8427e"],
        );
        assert_eq!(
            run_with(&a, "").1,
            "d41d8cd98f00b204e9800998ecf8427e solo - solo/d41d8cd98f00b204e9800998ecf8427e\n"
        );
        let a = args(
            Algorithm::Rendezvous,
            "_thumbs/$hash/t.jpg",
            &["d41d8cd98f00b204e9800998ecf8427e"],
        );
        assert_eq!(
            run_with(&a, "").1,
            "d41d8cd98f00b204e9800998ecf8427e - - _thumbs/d41d8cd98f00b204e9800998ecf8427e/t.jpg\n"
        );
    }

    #[test]
    fn reads_stdin_with_dash() {
        let a = args(Algorithm::Rendezvous, T, &["-"]);
        let (r, out) = run_with(
            &a,
            "d41d8cd98f00b204e9800998ecf8427e\r\n\n098f6bcd4621d373cade4e832627b4f6",
        );
        assert!(r.is_ok());
        assert_eq!(out.lines().count(), 2);
        assert!(out
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("098f6bcd4621d373cade4e832627b4f6 c a "));
    }

    #[test]
    fn bad_template_is_refused() {
        let a = args(
            Algorithm::Rendezvous,
            "{a=1=2}",
            &["d41d8cd98f00b204e9800998ecf8427e"],
        );
        let (r, out) = run_with(&a, "");
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("\"a=1=2\""), "{msg}");
        assert!(out.is_empty());
    }

    #[test]
    fn bad_argument_hash_prints_nothing() {
        let a = args(
            Algorithm::Rendezvous,
            T,
            &["d41d8cd98f00b204e9800998ecf8427e", "XYZ"],
        );
        let (r, out) = run_with(&a, "");
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("argument 2") && msg.contains("XYZ"), "{msg}");
        assert!(out.is_empty());
    }

    #[test]
    fn bad_stdin_hash_names_the_line() {
        let a = args(Algorithm::Rendezvous, T, &["-"]);
        let (r, out) = run_with(
            &a,
            "d41d8cd98f00b204e9800998ecf8427e\nD41D8CD98F00B204E9800998ECF8427E\n",
        );
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("stdin line 2"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(out.lines().count(), 1, "earlier lines are streamed");
    }

    #[test]
    fn non_utf8_stdin_is_a_bad_hash_not_a_panic() {
        let a = args(Algorithm::Rendezvous, T, &["-"]);
        let mut out = Vec::new();
        let r = execute(&a, &mut &b"\xff\xfe\n"[..], &mut out);
        assert!(matches!(r, Err(OwnersError::Hash(_))));
    }

    #[test]
    fn dash_among_other_hashes_is_a_bad_hash() {
        let a = args(
            Algorithm::Rendezvous,
            T,
            &["-", "d41d8cd98f00b204e9800998ecf8427e"],
        );
        assert!(matches!(run_with(&a, "").0, Err(OwnersError::Hash(_))));
    }
}
