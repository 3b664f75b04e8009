//! `lib_chan import-conf BOOK.conf`: a configuration written for the book's Erlang
//! lib_chan (Erlang terms, one per line: `{port, 1234}.` and
//! `{service, S, password, P, mfa, M, F, A}.`) turned into our TOML on standard output.
//!
//! Each service's password is hashed with argon2id (the plaintext is never written), its
//! handler mapped to ours where there is one (`mod_name_server`; `mod_chat` and the book's
//! `mod_chat_controller`; `mod_echo`), otherwise written as a commented-out entry that says
//! what is missing; `ArgsS` is carried over, and a `[tls]` section points at the
//! certificates `lib_chan gen-cert` makes. Malformed input gets the line and what was
//! expected.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lib_chan_protocol::Term;

/// The book's handler modules we have an equivalent of.
const HANDLERS: [(&str, &str); 4] = [
    ("mod_name_server", "mod_name_server"),
    ("mod_chat", "mod_chat"),
    ("mod_chat_controller", "mod_chat"),
    ("mod_echo", "mod_echo"),
];

/// Reads `path` and prints the TOML.
pub fn run(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    print!(
        "{}",
        convert(&text, path, lib_chan_server::auth::hash_password)?
    );
    Ok(())
}

/// One term of the file and the line it starts on.
struct Item {
    line: usize,
    text: String,
}

/// Splits Erlang source into its `.`-terminated terms, skipping `%` comments.
fn split_terms(src: &str, path: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;
    let mut line = 1;
    let mut chars = src.chars().peekable();
    // Inside "..." or '...'.
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if let Some(q) = quote {
            current.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    if n == '\n' {
                        line += 1;
                    }
                    current.push(n);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '%' => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        line += 1;
                        current.push('\n');
                        break;
                    }
                }
            }
            '"' | '\'' => {
                if current.trim().is_empty() {
                    start_line = line;
                }
                quote = Some(c);
                current.push(c);
            }
            '.' if chars.peek().is_none_or(|n| n.is_whitespace() || *n == '%') => {
                items.push(Item {
                    line: start_line,
                    text: std::mem::take(&mut current),
                });
            }
            c => {
                if current.trim().is_empty() && !c.is_whitespace() {
                    start_line = line;
                }
                current.push(c);
            }
        }
    }
    if quote.is_some() {
        bail!(
            "{}:{start_line}: unterminated string or quoted atom",
            path.display()
        );
    }
    if !current.trim().is_empty() {
        bail!(
            "{}:{start_line}: the last term does not end with `.`",
            path.display()
        );
    }
    Ok(items)
}

/// TOML for the book's config `text`; `hash` makes a password's argon2id hash.
pub fn convert(text: &str, path: &Path, hash: impl Fn(&[u8]) -> String) -> Result<String> {
    let mut port = None;
    let mut services = String::new();
    let mut names: Vec<String> = Vec::new();
    for item in split_terms(text, path)? {
        let at = format!("{}:{}", path.display(), item.line);
        let term = lib_chan_protocol::parse(&item.text)
            .map_err(|e| anyhow::anyhow!("{at}: not an Erlang term: {e}"))?;
        let items = term.as_tuple().unwrap_or(&[]);
        match items.first().and_then(Term::as_atom) {
            Some("port") => match items {
                [_, Term::Int(p)] if (0..=65535).contains(p) => port = Some(*p),
                _ => bail!("{at}: expected {{port, N}} with N from 0 to 65535, got {term}"),
            },
            Some("service") => {
                let [_, name, pw_tag, password, mfa_tag, module, func, args] = items else {
                    bail!("{at}: expected {{service, Name, password, P, mfa, Mod, Func, ArgsS}}, got a tuple of {} elements", items.len());
                };
                let name = name
                    .as_atom()
                    .map(str::to_owned)
                    .or_else(|| name.as_charlist())
                    .ok_or_else(|| anyhow::anyhow!("{at}: the service name must be an atom, got {name}"))?;
                if !pw_tag.is_atom("password") || !mfa_tag.is_atom("mfa") {
                    bail!("{at}: expected {{service, Name, password, P, mfa, Mod, Func, ArgsS}}, got {term}");
                }
                let password = password
                    .as_charlist()
                    .or_else(|| password.as_atom().map(str::to_owned))
                    .ok_or_else(|| {
                        anyhow::anyhow!("{at}: service {name}: the password must be a string")
                    })?;
                let (Some(module), Some(func)) = (module.as_atom(), func.as_atom()) else {
                    bail!("{at}: service {name}: Mod and Func must be atoms");
                };
                if names.contains(&name) {
                    bail!("{at}: service {name} is defined twice");
                }
                names.push(name.clone());
                write_service(&mut services, &name, &password, module, func, args, &hash);
            }
            _ => bail!(
                "{at}: expected {{port, N}} or {{service, Name, password, P, mfa, Mod, Func, ArgsS}}, got {}",
                lib_chan_protocol::message::snippet(&term, 60)
            ),
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# lib_chan.conf, imported from {} by `lib_chan import-conf`.",
        path.display()
    );
    let _ = writeln!(
        out,
        "# Check it with `lib_chan check-config FILE`; every key is in lib_chan.conf.example."
    );
    let _ = writeln!(out, "port = {}", port.unwrap_or(1234));
    let _ = writeln!(out, "bind = \"0.0.0.0\"\n");
    let _ = writeln!(out, "[tls]");
    let _ = writeln!(
        out,
        "# Make them with: lib_chan gen-cert --out certs --host $(hostname -f)"
    );
    let _ = writeln!(
        out,
        "# (clients then trust certs/ca.pem; keep certs/ca.key off the server)."
    );
    let _ = writeln!(out, "cert = \"certs/server.pem\"");
    let _ = writeln!(out, "key = \"certs/server.key\"");
    out.push_str(&services);
    Ok(out)
}

fn write_service(
    out: &mut String,
    name: &str,
    password: &str,
    module: &str,
    func: &str,
    args: &Term,
    hash: &impl Fn(&[u8]) -> String,
) {
    let ours = HANDLERS
        .iter()
        .find(|(book, _)| *book == module)
        .map(|(_, o)| *o);
    let hashed = hash(password.as_bytes());
    let args = toml_string(&args.to_string());
    let _ = writeln!(out);
    match ours {
        Some(handler) => {
            let _ = writeln!(
                out,
                "# From {{service, {name}, password, ..., mfa, {module}, {func}, ...}}."
            );
            let _ = writeln!(out, "[[service]]");
            let _ = writeln!(out, "name = {}", toml_string(name));
            let _ = writeln!(out, "password = \"{hashed}\"");
            let _ = writeln!(out, "handler = \"{handler}\"");
            let _ = writeln!(out, "args = {args}");
        }
        None => {
            let _ = writeln!(
                out,
                "# Not imported: {module}:{func} has no built-in equivalent here. Write it"
            );
            let _ = writeln!(
                out,
                "# as a service (docs/writing-a-service.md), register it, and uncomment:"
            );
            let _ = writeln!(out, "# [[service]]");
            let _ = writeln!(out, "# name = {}", toml_string(name));
            let _ = writeln!(out, "# password = \"{hashed}\"");
            let _ = writeln!(out, "# handler = \"{module}\"");
            let _ = writeln!(out, "# args = {args}");
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOK: &str = r#"%% The book's lib_chan config, in its own shape.
{port, 2233}.
{service, nameServer, password, "ABXy45", mfa, mod_name_server, start_me_up, notUsed}.
{service, chat, password, "AsDT67aQ",
    mfa, mod_chat_controller, start, []}.   % spans two lines
{service, math, password, "qwerty", mfa, mod_math, run, {"a.b", 'quoted. atom', 1.5}}.
"#;

    fn fake_hash(pw: &[u8]) -> String {
        format!("HASH({})", pw.len())
    }

    #[test]
    fn the_book_shape_converts_without_the_plaintext() {
        let out = convert(BOOK, Path::new("book.conf"), fake_hash).unwrap();
        assert!(out.contains("port = 2233\n"), "{out}");
        assert!(out.contains("name = \"nameServer\"\npassword = \"HASH(6)\"\nhandler = \"mod_name_server\"\nargs = \"notUsed\""), "{out}");
        assert!(
            out.contains(
                "name = \"chat\"\npassword = \"HASH(8)\"\nhandler = \"mod_chat\"\nargs = \"[]\""
            ),
            "{out}"
        );
        assert!(out.contains("# Not imported: mod_math:run"), "{out}");
        assert!(
            out.contains("# args = \"{\\\"a.b\\\",'quoted. atom',1.5}\""),
            "{out}"
        );
        for secret in ["ABXy45", "AsDT67aQ", "qwerty"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("[tls]\n"));
    }

    #[test]
    fn malformed_input_names_the_line_and_what_was_expected() {
        for (text, line, words) in [
            ("{port, 1234}.\n{service, x, password}.\n", 2, "expected {service, Name"),
            ("{port, 99999}.\n", 1, "from 0 to 65535"),
            ("\n\n{colour, red}.\n", 3, "expected {port, N}"),
            ("{port, 1234}\n", 1, "does not end with `.`"),
            ("{port, \"12}.\n", 1, "unterminated"),
            ("{service, 42, password, \"p\", mfa, m, f, []}.\n", 1, "must be an atom"),
            ("{service, s, password, 42, mfa, m, f, []}.\n", 1, "password must be a string"),
            ("{service, s, pass, \"p\", mfa, m, f, []}.\n", 1, "expected {service"),
            ("{service, s, password, \"p\", mfa, m, f, []}.\n{service, s, password, \"p\", mfa, m, f, []}.\n", 2, "defined twice"),
            ("{port, 1234 1}.\n", 1, "not an Erlang term"),
        ] {
            let e = convert(text, Path::new("book.conf"), fake_hash).unwrap_err().to_string();
            assert!(e.starts_with(&format!("book.conf:{line}: ")), "{e}");
            assert!(e.contains(words), "{e}");
        }
    }
}
