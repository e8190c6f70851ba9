//! The README's shell blocks as data: the code blocks of a section, each command split into
//! words the way `sh` would (quotes, backslash escapes, line continuations), its leading
//! `NAME=value` assignments apart.
#![allow(dead_code)]

/// One shell command: its leading environment assignments and its words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellCommand {
    /// `NAME=value` before the command, in order.
    pub env: Vec<(String, String)>,
    /// The command and its arguments.
    pub argv: Vec<String>,
}

impl ShellCommand {
    /// The value of an assignment, if the command has it.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The README of this crate.
pub fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of every fenced block tagged `lang`, in order, starting at the first heading
/// that starts with `heading` (the whole text for `None`).
pub fn blocks(text: &str, heading: Option<&str>, lang: &str) -> Vec<Vec<String>> {
    let start = match heading {
        None => 0,
        Some(h) => text
            .lines()
            .position(|l| l.starts_with(h))
            .unwrap_or_else(|| panic!("no heading {h:?} in the README")),
    };
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines().skip(start) {
        match &mut current {
            None if line.trim() == format!("```{lang}") => current = Some(Vec::new()),
            None => {}
            Some(_) if line.trim() == "```" => out.extend(current.take()),
            Some(lines) => lines.push(line.to_owned()),
        }
    }
    out
}

/// The commands of a shell block: comments and blank lines dropped, `\` continuations joined,
/// a trailing `# comment` after a command removed.
pub fn commands(block: &[String]) -> Vec<ShellCommand> {
    let mut joined = Vec::new();
    let mut pending = String::new();
    for line in block {
        let line = line.trim_end();
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        joined.push(std::mem::take(&mut pending));
    }
    joined
        .iter()
        .filter_map(|l| {
            let words = split(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if words.is_empty() {
                return None;
            }
            let mut env = Vec::new();
            let mut argv = Vec::new();
            for w in words {
                match w.split_once('=') {
                    Some((name, value))
                        if argv.is_empty()
                            && !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                    {
                        env.push((name.to_owned(), value.to_owned()));
                    }
                    _ => argv.push(w),
                }
            }
            Some(ShellCommand { env, argv })
        })
        .collect()
}

/// `sh` word splitting of one line: single quotes keep everything, double quotes keep
/// everything but `\"` and `\\`, a backslash outside quotes escapes the next character, an
/// unquoted `#` at a word's start begins a comment.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            word.extend(chars.next());
                        }
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A `curl` command line as a request: method, URL, headers, body. Knows `-s`, `-H`/`--header`,
/// `-d`/`--data`, `-X`/`--request`; anything else panics, so the README cannot grow a flag this
/// test silently ignores.
#[derive(Debug)]
pub struct Curl {
    /// `GET`, or `POST` with a body, or what `-X` says.
    pub method: String,
    /// The URL.
    pub url: String,
    /// `(name, value)` of each `-H`.
    pub headers: Vec<(String, String)>,
    /// The `-d` body.
    pub body: Option<String>,
}

/// Parse `argv` (starting with `curl`).
pub fn curl(argv: &[String]) -> Curl {
    assert_eq!(argv.first().map(String::as_str), Some("curl"), "{argv:?}");
    let mut out = Curl {
        method: String::new(),
        url: String::new(),
        headers: Vec::new(),
        body: None,
    };
    let mut args = argv[1..].iter();
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{a} needs a value"))
                .clone()
        };
        match a.as_str() {
            "-s" | "--silent" | "-sS" => {}
            "-H" | "--header" => {
                let h = value();
                let (name, v) = h.split_once(':').unwrap_or_else(|| panic!("header {h:?}"));
                out.headers
                    .push((name.trim().to_owned(), v.trim().to_owned()));
            }
            "-d" | "--data" => out.body = Some(value()),
            "-X" | "--request" => out.method = value(),
            flag if flag.starts_with('-') => panic!("curl flag {flag} is not understood here"),
            url => {
                assert!(out.url.is_empty(), "two URLs: {argv:?}");
                out.url = url.to_owned();
            }
        }
    }
    if out.method.is_empty() {
        out.method = if out.body.is_some() { "POST" } else { "GET" }.into();
    }
    out
}
