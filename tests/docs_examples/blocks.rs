//! Fenced code blocks of a Markdown file and their info-string annotations.

use std::fmt;

/// One fenced code block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Markdown file, relative to the repository root.
    pub(crate) doc: String,
    /// 1-based line of the opening fence.
    pub(crate) line: usize,
    /// The language tag: the first word of the info string (`""` when absent).
    pub(crate) lang: String,
    /// The whole info string after the fence.
    pub(crate) info: String,
    /// The text between the fences, with a trailing newline.
    pub(crate) body: String,
    pub(crate) ann: Annotations,
}

/// What the words after the language tag say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Annotations {
    /// `no-run: <reason>`: not executed (still syntax-checked where the language allows).
    pub(crate) no_run: Option<String>,
    /// A file name (`pricing.yaml`): the block is also written to the sandbox under it,
    /// before any block of the document runs.
    pub(crate) file: Option<String>,
    /// `kind=<k>`: how to validate a YAML block, when its content does not say.
    pub(crate) kind: Option<String>,
    /// `exit=<n>`: the exit status a shell block must end with (default 0).
    pub(crate) exit: Option<i32>,
    /// `empty-ok`: an SQL block may return no rows.
    pub(crate) empty_ok: bool,
    /// Words this parser does not know (an error).
    pub(crate) unknown: Vec<String>,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ```{}", self.doc, self.line, self.info)
    }
}

fn parse_info(info: &str) -> (String, Annotations) {
    let mut ann = Annotations::default();
    let info = info.trim();
    let (lang, rest) = match info.split_once(char::is_whitespace) {
        Some((l, r)) => (l, r.trim()),
        None => (info, ""),
    };
    // `no-run:` takes the rest of the info string as its reason.
    let (words, reason) = match rest.find("no-run") {
        Some(i) => {
            let after = rest[i + "no-run".len()..].trim_start();
            let reason = after.strip_prefix(':').unwrap_or(after).trim();
            (&rest[..i], Some(reason.to_owned()))
        }
        None => (rest, None),
    };
    ann.no_run = reason;
    for w in words.split_whitespace() {
        if let Some(k) = w.strip_prefix("kind=") {
            ann.kind = Some(k.to_owned());
        } else if let Some(n) = w.strip_prefix("exit=") {
            match n.parse() {
                Ok(n) => ann.exit = Some(n),
                Err(_) => ann.unknown.push(w.to_owned()),
            }
        } else if w == "empty-ok" {
            ann.empty_ok = true;
        } else if ann.file.is_none()
            && w.contains('.')
            && !w.contains('=')
            && !w.contains('/')
            && !w.starts_with('.')
        {
            ann.file = Some(w.to_owned());
        } else {
            ann.unknown.push(w.to_owned());
        }
    }
    (lang.to_ascii_lowercase(), ann)
}

/// Every fenced block (backticks or tildes, at most 3 spaces of indentation) of `text`.
pub(crate) fn parse(doc: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let trimmed = line.trim_start_matches(' ');
        let Some(fence_char) = trimmed.chars().next().filter(|c| *c == '`' || *c == '~') else {
            continue;
        };
        let fence_len = trimmed.chars().take_while(|c| *c == fence_char).count();
        if indent > 3 || fence_len < 3 {
            continue;
        }
        let info = trimmed[fence_len..].trim().to_owned();
        if fence_char == '`' && info.contains('`') {
            continue; // inline code, not a fence
        }
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            let t = l.trim_start_matches(' ');
            let closing = t.chars().take_while(|c| *c == fence_char).count();
            if closing >= fence_len && t[closing..].trim().is_empty() {
                break;
            }
            // Remove the opening fence's indentation from content lines.
            let strip = l.len() - l.trim_start_matches(' ').len();
            body.push_str(&l[strip.min(indent)..]);
            body.push('\n');
        }
        let (lang, ann) = parse_info(&info);
        out.push(Block {
            doc: doc.to_owned(),
            line: i + 1,
            lang,
            info,
            body,
            ann,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_strings() {
        let (l, a) = parse_info("sh no-run: needs a Kafka broker");
        assert_eq!(l, "sh");
        assert_eq!(a.no_run.as_deref(), Some("needs a Kafka broker"));
        let (l, a) = parse_info("yaml pricing.yaml");
        assert_eq!(
            (l.as_str(), a.file.as_deref()),
            ("yaml", Some("pricing.yaml"))
        );
        let (_, a) = parse_info("sql empty-ok");
        assert!(a.empty_ok);
        let (_, a) = parse_info("sh exit=3");
        assert_eq!(a.exit, Some(3));
        let (_, a) = parse_info("yaml kind=policy policies.yaml");
        assert_eq!(a.kind.as_deref(), Some("policy"));
        assert_eq!(a.file.as_deref(), Some("policies.yaml"));
        let (_, a) = parse_info("sh whatever");
        assert_eq!(a.unknown, vec!["whatever"]);
    }

    #[test]
    fn fences() {
        let md = "text\n```sh\necho hi\n```\n\n````md\n```x\n````\n  ~~~yaml\n  a: 1\n  ~~~\n";
        let b = parse("x.md", md);
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].line, b[0].lang.as_str(), b[0].body.as_str()),
            (2, "sh", "echo hi\n")
        );
        assert_eq!(b[1].body, "```x\n");
        assert_eq!(b[2].body, "a: 1\n");
    }
}
