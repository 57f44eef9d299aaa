//! Unflagged lines of `processors/exim/parser.py`: `_words_line` and its `_WORD_HANDLERS`, SMTP-session
//! fields (`_session`), host-led lines (`_host_line`), rejections and the cPanel/SpamAssassin lines.

use std::borrow::Cow;

use super::parser::{strip_angle, with_tokens, Ctx, MAX_ITEMS};
use super::parser_text::{
    advance, code_at, contains, contains_within, find, find_byte, find_in, first_char, is_digit_str, is_msgid,
    is_upper, partition, partition3, prefix_chars, py_float, py_lstrip, py_strip, py_upper, spam_score_search,
    split_space,
};
use super::types::LineKind;

const PROTOCOL_PREFIXES: [&str; 5] =
    ["SMTP protocol", "SMTP syntax", "incomplete transaction", "SMTP command", "SMTP data"];

fn starts_any(s: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| s.starts_with(prefix))
}

/// `s[1:]` in characters (Python skips one character, which may be several bytes).
fn skip_char(s: &str, count: usize) -> &str {
    &s[advance(s, 0, count)..]
}

/// `where.rstrip(":").upper()[:32]`.
fn where_name(text: &str) -> Cow<'_, str> {
    let upper = py_upper(text.trim_end_matches(':'));
    match upper {
        Cow::Borrowed(b) => Cow::Borrowed(prefix_chars(b, 32)),
        Cow::Owned(o) => Cow::Owned(prefix_chars(&o, 32).to_owned()),
    }
}

fn upper_cut<'s>(text: &'s str) -> Cow<'s, str> {
    match py_upper(text) {
        Cow::Borrowed(b) => Cow::Borrowed(prefix_chars(b, 32)),
        Cow::Owned(o) => Cow::Owned(prefix_chars(&o, 32).to_owned()),
    }
}

/// `_after_colon`: what follows the first ": ".
fn after_colon(text: &str) -> Option<&str> {
    find(text, ": ").map(|k| &text[k + 2..])
}

impl<'a> Ctx<'a, '_> {
    fn set_kind_detail(&mut self, kind: LineKind, detail: &'a str) {
        self.p.kind = kind;
        self.p.detail = Some(Cow::Borrowed(detail));
    }

    fn info_or(&self, otherwise: LineKind) -> LineKind {
        if self.p.msgid.is_some() {
            LineKind::MessageInfo
        } else {
            otherwise
        }
    }

    /// `_session`: leading SMTP-session fields (H= U= F= A= I= X= P= S= ...). Returns the verb index.
    pub(super) fn session(&mut self, tokens: &[&'a str], mut i: usize) -> usize {
        let n = tokens.len();
        while i < n {
            let tok = tokens[i];
            let eq = super::parser::tag_eq(tok, 7);
            let Some(eq) = eq.filter(|_| is_upper(first_char(tok))) else {
                if !tok.is_empty() {
                    return i;
                }
                i += 1;
                continue;
            };
            i += 1;
            let tag = &tok[..eq];
            let value = &tok[eq + 1..];
            match tag {
                "H" => i = self.take_host(tokens, i, value).0,
                "F" => self.p.sender = Some(Cow::Borrowed(strip_angle(value))),
                "U" => self.p.user = Some(Cow::Borrowed(value)),
                "A" => self.p.auth = Some(Cow::Borrowed(value)),
                "I" => self.interface(value),
                "X" => self.p.tls = Some(Cow::Borrowed(value)),
                "P" => self.p.protocol = Some(Cow::Borrowed(value)),
                "S" => self.p.size = self.int_of(value),
                _ if value.starts_with('"') => {
                    let (quoted, next) = self.take_quoted(tokens, i, value);
                    self.set_extra(tag, quoted);
                    i = next;
                }
                _ => self.set_extra(tag, value),
            }
        }
        n
    }

    /// `_rejection`: `[temporarily ]rejected <where> <arg>: msg`, `sender verify fail for <x>: msg`...
    fn rejection(&mut self, text: &'a str) -> bool {
        let mut temporary = false;
        let mut t = text;
        if let Some(rest) = t.strip_prefix("temporarily ") {
            temporary = true;
            t = rest;
        }
        let place: Cow<'a, str>;
        if let Some(after) = t.strip_prefix("rejected ") {
            let (mut word, mut rest) = partition(after, " ");
            let named: Cow<'a, str>;
            if word == "after" {
                (word, rest) = partition(rest, " ");
                named = Cow::Borrowed(word);
            } else if word == "by" {
                named = if rest.starts_with("non-SMTP") {
                    Cow::Borrowed("NON_SMTP")
                } else {
                    match py_upper(partition(rest, " ").0.trim_end_matches(':')) {
                        Cow::Borrowed(b) => Cow::Borrowed(b),
                        Cow::Owned(o) => Cow::Owned(o),
                    }
                };
            } else if word == "connection" {
                named = Cow::Borrowed("CONNECT");
            } else {
                if word == "EHLO" && rest.starts_with("or HELO") {
                    rest = skip_char(rest, 8);
                }
                named = Cow::Borrowed(word);
            }
            let glued = named.ends_with(':');
            place = match named {
                Cow::Borrowed(b) => where_name(b),
                Cow::Owned(o) => Cow::Owned(where_name(&o).into_owned()),
            };
            self.p.error =
                if glued { Some(Cow::Borrowed(rest)) } else { self.rejection_arg(&place, rest).map(Cow::Borrowed) };
        } else if t.starts_with("sender verify ") || t.starts_with("recipient verify ") {
            let (which, rest) = partition(t, " verify ");
            let (outcome, mut rest) = partition(rest, " ");
            temporary = temporary || outcome == "defer";
            place = Cow::Borrowed(if which == "sender" { "SENDER_VERIFY" } else { "RECIPIENT_VERIFY" });
            if rest.starts_with("for <") {
                if let Some(close) = find_byte(rest, b'>') {
                    if close > 0 {
                        let address = Cow::Borrowed(&rest[5..close]);
                        if which == "sender" {
                            self.p.sender = Some(address);
                        } else {
                            self.p.recipients.push(address);
                        }
                        rest = &rest[close + 1..];
                    }
                }
            }
            self.p.error = after_colon(rest).map(Cow::Borrowed);
        } else if t.starts_with("dropped by ") {
            let q1 = find_byte(t, b'\'');
            let q2 = q1.and_then(|q1| find_in(t, "'", q1 + 1, t.len()));
            place = match (q1, q2) {
                (Some(q1), Some(q2)) if q2 > q1 => upper_cut(&t[q1 + 1..q2]),
                _ => Cow::Borrowed("ACL"),
            };
            self.p.error = after_colon(t).map(Cow::Borrowed);
            self.set_extra("dropped", "1");
        } else if let Some(rest) = t.strip_prefix("rejected:") {
            place = Cow::Borrowed("DATA");
            self.p.error = Some(Cow::Borrowed(skip_char(rest, 1)));
        } else {
            return false;
        }
        self.p.kind = LineKind::Rejection;
        self.set_extra("where", place);
        self.set_extra("temporary", if temporary { "1" } else { "0" });
        if let Some(Cow::Borrowed(error)) = self.p.error {
            if !error.is_empty() {
                self.response(error);
            }
        }
        true
    }

    /// `_rejection_arg`: the argument of a rejected command and the message.
    fn rejection_arg(&mut self, place: &str, rest: &'a str) -> Option<&'a str> {
        if rest.starts_with('<') || rest.starts_with("FROM:<") || rest.starts_with("TO:<") {
            let open = find_byte(rest, b'<').unwrap_or(0);
            if let Some(close) = find_in(rest, ">", open, rest.len()) {
                if close > 0 {
                    let address = Cow::Borrowed(&rest[open + 1..close]);
                    if place == "MAIL" {
                        self.p.sender = Some(address);
                    } else {
                        self.p.recipients.push(address);
                    }
                    let tail = &rest[close + 1..];
                    if let Some(message) = tail.strip_prefix(": ") {
                        return Some(message);
                    }
                    if let Some(u) = find(tail, " U=") {
                        let user = partition(partition(&tail[u + 3..], ":").0, " ").0;
                        self.p.user = Some(Cow::Borrowed(user));
                    }
                    return after_colon(tail);
                }
            }
        }
        if matches!(place, "RCPT" | "MAIL" | "VRFY" | "EHLO" | "HELO" | "ETRN" | "EXPN") && !rest.is_empty() {
            let (arg, found, tail) = partition3(rest, ": ");
            let arg = partition(arg, " ").0;
            if !arg.is_empty() {
                match place {
                    "RCPT" => self.p.recipients.push(Cow::Borrowed(arg)),
                    "MAIL" => self.p.sender = Some(Cow::Borrowed(arg)),
                    _ => self.set_extra("argument", arg),
                }
            }
            return found.then_some(tail);
        }
        after_colon(rest)
    }

    /// `_spam_warning`: cPanel `Warning: "SpamAssassin as <user> detected ... as [NOT ]spam (n)"`.
    fn spam_warning(&mut self, text: &'a str) -> bool {
        let Some(k) = find(text, "detected ") else { return false };
        let (is_spam, start) = match find_in(text, " as NOT spam (", k, text.len()) {
            Some(k2) => (false, k2 + 14),
            None => match find_in(text, " as spam (", k, text.len()) {
                Some(k2) => (true, k2 + 10),
                None => return false,
            },
        };
        let end = find_in(text, ")", start, advance(text, start, 32));
        self.p.spam_score = match end {
            Some(end) if end > start => py_float(&text[start..end]),
            _ => None,
        };
        self.p.is_spam = Some(is_spam);
        self.p.kind = LineKind::SpamScore;
        if let Some(sa) = find(text, "SpamAssassin as ") {
            let from = (sa + 16).min(k);
            let scanner = if sa + 16 <= k { py_strip(&text[from..k]) } else { &text[k..k] };
            self.set_extra("scanner", scanner);
        }
        if contains_within(text, "OUTGOING", k, 40) {
            self.set_extra("direction", "outgoing");
        }
        true
    }

    /// `_host_line`: lines led by `H=` (or `U=`/`F=`).
    fn host_line(&mut self, rest: &'a str) {
        let mut text = match self.session_fast(rest) {
            Some(text) => text,
            None => with_tokens(rest, |tokens| {
                let n = tokens.len();
                let j = self.session(tokens, 0);
                if j < n {
                    self.join(&tokens[j..])
                } else {
                    &self.line[..0]
                }
            }),
        };
        if let Some(rest) = text.strip_prefix(": ") {
            text = rest;
        } else if text == ":" {
            text = &text[1..];
        }
        if self.rejection(text) {
            return;
        }
        if text.starts_with("Warning:") {
            if !self.spam_warning(text) {
                let kind = self.info_or(LineKind::Protocol);
                self.set_kind_detail(kind, text);
            }
            return;
        }
        if starts_any(text, &PROTOCOL_PREFIXES) {
            self.set_kind_detail(LineKind::Protocol, text);
            return;
        }
        if self.p.msgid.is_some() && self.p.host_ip.is_some() && !text.is_empty() {
            self.p.kind = LineKind::HostError;
            self.p.error = Some(Cow::Borrowed(text));
            self.response(text);
            return;
        }
        self.set_kind_detail(LineKind::Note, text);
    }

    /// `_fullhost_after`: the client `name (helo) [ip]:port I= Ci= D=` after `marker`; what follows.
    fn fullhost_after(&mut self, text: &'a str, marker: &str) -> &'a str {
        // `find(text, marker)`, known for the usual texts (their heads hold no other "from ")
        let known = match marker {
            "from " if text.starts_with("connection from ") => Some(11),
            "from " if text.starts_with("from ") => Some(0),
            _ => None,
        };
        let Some(k) = known.or_else(|| find(text, marker)) else { return text };
        let after = &text[k + marker.len()..];
        if let Some(rest) = self.fullhost_fast(after) {
            return rest;
        }
        with_tokens(after, |tokens| {
            if tokens[0].is_empty() {
                return &after[..0];
            }
            let (i, _) = self.take_host(tokens, 1, tokens[0]);
            let i = self.session(tokens, i);
            if i < tokens.len() {
                self.join(&tokens[i..])
            } else {
                &after[after.len()..]
            }
        })
    }

    /// `fullhost_after`'s tokens for the usual shapes `[ip]:port`, `name [ip]:port`, `name (helo) [ip]:port`
    /// followed by plain tags and text, single-spaced; None (nothing set) for any other.
    fn fullhost_fast(&mut self, after: &'a str) -> Option<&'a str> {
        if self.p.host.is_some() || self.p.helo.is_some() || self.p.host_ip.is_some() || self.p.host_port.is_some() {
            return None; // an earlier H= (only the general path knows how they combine)
        }
        let host = fast_host(after, 0)?;
        let (tags, count, rest) = fast_tags(after, host.end)?;
        self.commit_fast(&host, &tags[..count]);
        Some(rest)
    }

    /// `_session` then the text after it for a line led by `H=` in the usual shapes (see `fast_host` and
    /// `fast_tags`); None (nothing set) for any other.
    fn session_fast(&mut self, rest: &'a str) -> Option<&'a str> {
        if !rest.starts_with("H=") || self.p.host.is_some() || self.p.helo.is_some() || self.p.host_ip.is_some() {
            return None;
        }
        let host = fast_host(rest, 2)?;
        let (tags, count, text) = fast_tags(rest, host.end)?;
        self.commit_fast(&host, &tags[..count]);
        Some(text)
    }

    fn commit_fast(&mut self, host: &FastHost<'a>, tags: &[(&'a str, &'a str)]) {
        if let Some(name) = host.host {
            self.p.host = Some(Cow::Borrowed(name));
        }
        if let Some(helo) = host.helo {
            self.p.helo = Some(Cow::Borrowed(helo));
        }
        self.p.host_ip = Some(Cow::Borrowed(host.ip));
        if host.port.is_some() {
            self.p.host_port = host.port;
        }
        for &(tag, value) in tags {
            match tag {
                "F" => self.p.sender = Some(Cow::Borrowed(strip_angle(value))),
                "U" => self.p.user = Some(Cow::Borrowed(value)),
                "A" => self.p.auth = Some(Cow::Borrowed(value)),
                "I" => self.interface(value),
                "X" => self.p.tls = Some(Cow::Borrowed(value)),
                "P" => self.p.protocol = Some(Cow::Borrowed(value)),
                "S" => self.p.size = self.int_of(value),
                _ => self.set_extra(tag, value),
            }
        }
    }

    /// `_words_line`: unflagged lines, dispatched on the first word.
    pub(super) fn words_line(&mut self, rest: &'a str) {
        // `partition(rest, " ")`
        let end = word_end(rest.as_bytes(), 0);
        let (first, tail) = (&rest[..end], &rest[(end + 1).min(rest.len())..]);
        if self.word_handler(first, rest, tail) {
            return;
        }
        if (first.starts_with("H=") || first.starts_with("U=") || first.starts_with("F=")) && first.len() > 2 {
            self.host_line(rest);
            return;
        }
        if let Some(cwd) = first.strip_prefix("cwd=") {
            self.p.kind = LineKind::Arguments;
            let args = tail;
            self.set_extra("cwd", cwd);
            let (count, argv) = partition(args, " args: ");
            if !argv.is_empty() || is_digit_str(count) {
                self.set_extra("argc", count);
                self.set_extra("args", argv);
            }
            return;
        }
        if tail == "error ignored" || tail.ends_with(": error ignored") {
            self.error_ignored(rest);
            return;
        }
        if tail.starts_with("authenticator failed H=") && self.p.msgid.is_some() {
            with_tokens(&tail[21..], |tokens| {
                let j = self.session(tokens, 0);
                self.p.kind = LineKind::HostError;
                self.set_extra("authenticator", first);
                let error = if j < tokens.len() { self.join(&tokens[j..]) } else { &tail[tail.len()..] };
                self.p.error = Some(Cow::Borrowed(error));
                self.response(error);
                self.p.smtp_phase = Some(Cow::Borrowed("auth"));
            });
            return;
        }
        if tail.starts_with("router: ") || tail.starts_with("transport: ") {
            let kind = self.info_or(LineKind::Daemon);
            self.set_kind_detail(kind, rest);
            return;
        }
        if first.starts_with('[') && self.bracket_ip(rest, tail) {
            return;
        }
        if tail.starts_with("authenticator failed for ") {
            self.p.kind = LineKind::Protocol;
            self.set_extra("authenticator", first);
            let mut after = self.fullhost_after(tail, "failed for ");
            if let Some(rest) = after.strip_prefix(": ") {
                after = rest;
            }
            self.p.error = Some(Cow::Borrowed(after));
            self.p.detail = Some(Cow::Borrowed("authenticator failed"));
            if let Some((code, _)) = code_at(after, 0) {
                self.p.smtp_code = Some(code);
            }
            self.p.smtp_phase = Some(Cow::Borrowed("auth"));
            return;
        }
        if tail.starts_with('[') && self.p.msgid.is_some() {
            self.p.host = Some(Cow::Borrowed(first));
            let (ip, _, text) = partition3(tail, " ");
            let colon = self.ip_token(ip);
            let mut text = text;
            if let Some(rest) = text.strip_prefix(": ") {
                text = rest;
            } else if !colon && text.starts_with(':') {
                text = py_lstrip(&text[1..]);
            }
            self.p.kind = LineKind::HostError;
            self.p.error = Some(Cow::Borrowed(text));
            self.response(text);
            return;
        }
        self.set_kind_detail(LineKind::Note, rest);
    }

    fn error_ignored(&mut self, rest: &'a str) {
        self.p.kind = LineKind::ErrorIgnored;
        let head = match rest.rfind(':') {
            Some(colon) => &rest[..colon],
            None => partition(rest, " ").0,
        };
        with_tokens(head, |tokens| {
            self.delivery_head(tokens);
        });
        self.p.detail = Some(Cow::Borrowed("error ignored"));
    }

    fn word_handler(&mut self, first: &'a str, rest: &'a str, tail: &'a str) -> bool {
        match first {
            "Completed" => self.w_completed(tail),
            "Frozen" => self.w_frozen(tail),
            "frozen" | "unfrozen" | "removed" => self.w_lifecycle_lower(first, rest, tail),
            "Unfrozen" => self.w_unfrozen(tail),
            "cancelled" => {
                if !tail.starts_with("by ") {
                    return false;
                }
                self.set_kind_detail(LineKind::Cancelled, rest);
                true
            }
            "Message" => {
                if tail.starts_with("is frozen") || tail.starts_with("is not frozen") || tail.starts_with("is locked") {
                    self.set_kind_detail(LineKind::MessageInfo, rest);
                    return true;
                }
                false
            }
            "Spool" => self.w_spool(rest, tail),
            "Start" | "End" => self.w_queue(rest, tail),
            "SMTP" => self.w_smtp(rest, tail),
            "Sender" => self.w_sender(tail),
            "no" => self.w_no(rest, tail),
            "TLS" => self.w_tls(rest, tail),
            "DKIM:" => {
                let kind = self.info_or(LineKind::Protocol);
                self.set_kind_detail(kind, rest);
                if let Some(tok) = split_space(tail).find(|tok| tok.starts_with("d=")) {
                    self.set_extra("dkim_domain", &tok[2..]);
                }
                true
            }
            "Warning:" => {
                if !self.spam_warning(rest) {
                    let kind = self.info_or(LineKind::Daemon);
                    self.set_kind_detail(kind, rest);
                }
                true
            }
            "SA:" => self.w_sa(tail),
            "exim" => {
                if !contains_within(tail, "daemon", 0, 40) && !contains_within(tail, "started", 0, 60) {
                    return false;
                }
                self.set_kind_detail(LineKind::Daemon, rest);
                true
            }
            "daemon:" | "daemon" | "SIGHUP" | "pid" => {
                self.set_kind_detail(LineKind::Daemon, rest);
                true
            }
            "Connection" => {
                if !tail.starts_with("from ") {
                    return false;
                }
                self.p.kind = LineKind::Connection;
                if self.skip_fields() {
                    return true;
                }
                let detail = self.fullhost_after(tail, "from ");
                self.p.detail = Some(Cow::Borrowed(detail));
                true
            }
            "unexpected" => {
                if !tail.starts_with("disconnection") {
                    return false;
                }
                self.connection_after("unexpected disconnection", tail, " from ");
                true
            }
            "refused" => {
                if !tail.starts_with("connection from ") {
                    return false;
                }
                self.connection_after("refused connection", tail, "from ");
                true
            }
            "rejected" | "temporarily" | "sender" | "recipient" => self.rejection(rest),
            "VRFY" | "EXPN" | "ETRN" => {
                self.set_kind_detail(LineKind::Protocol, rest);
                if let Some(k) = find(rest, " H=") {
                    with_tokens(&rest[k + 1..], |tokens| {
                        self.session(tokens, 0);
                    });
                }
                true
            }
            "Remote" => {
                if !tail.starts_with("host ") || self.p.msgid.is_none() {
                    return false;
                }
                self.p.kind = LineKind::HostError;
                self.p.error = Some(Cow::Borrowed(rest));
                self.old_host(rest, 12);
                self.response(rest);
                true
            }
            "Failed" | "failed" | "Expansion" | "Error" | "Tainted" | "tainted" | "malware" | "spool" | "re-exec"
            | "timed" | "original" | "moved" | "qualify/rewrite:" | "LOG:" => self.w_problem(rest),
            "ACL" => tail.starts_with('"') && self.w_problem(rest),
            "Peer" | "Server" | "Required" | "OCSP" | "DANE" => self.w_tls_problem(rest, tail),
            _ => false,
        }
    }

    fn connection_after(&mut self, detail: &'static str, tail: &'a str, marker: &str) {
        self.p.kind = LineKind::Connection;
        self.p.detail = Some(Cow::Borrowed(detail));
        let after = self.fullhost_after(tail, marker);
        if !after.is_empty() {
            self.set_extra("after", after);
        }
    }

    fn w_problem(&mut self, rest: &'a str) -> bool {
        let kind = self.info_or(LineKind::Daemon);
        self.set_kind_detail(kind, rest);
        true
    }

    fn w_completed(&mut self, tail: &'a str) -> bool {
        self.p.kind = LineKind::Completed;
        if !tail.is_empty() {
            for tok in split_space(tail) {
                if let Some(eq) = find_byte(tok, b'=') {
                    if eq > 0 {
                        self.set_extra(&tok[..eq], &tok[eq + 1..]);
                    }
                }
            }
        }
        true
    }

    fn w_frozen(&mut self, tail: &'a str) -> bool {
        self.p.kind = LineKind::Frozen;
        self.p.detail = if tail.starts_with('(') {
            Some(Cow::Borrowed(tail.trim_matches(|c| c == '(' || c == ')')))
        } else if tail.is_empty() {
            None
        } else {
            Some(Cow::Borrowed(tail))
        };
        true
    }

    fn w_unfrozen(&mut self, tail: &'a str) -> bool {
        self.p.kind = LineKind::Unfrozen;
        self.p.detail = match tail.strip_prefix("by ") {
            Some(who) => Some(Cow::Borrowed(who)),
            None if tail.is_empty() => None,
            None => Some(Cow::Borrowed(tail)),
        };
        true
    }

    fn w_lifecycle_lower(&mut self, first: &'a str, rest: &'a str, tail: &'a str) -> bool {
        match first {
            "frozen" => self.w_frozen(tail),
            "unfrozen" => self.w_unfrozen(tail),
            _ if tail.starts_with("by ") => {
                self.set_kind_detail(LineKind::Cancelled, rest);
                true
            }
            _ => false,
        }
    }

    fn w_spool(&mut self, rest: &'a str, tail: &'a str) -> bool {
        let kind =
            if self.p.msgid.is_some() || contains(tail, "locked") { LineKind::MessageInfo } else { LineKind::Daemon };
        self.set_kind_detail(kind, rest);
        if self.p.msgid.is_none() {
            if let Some(k) = find(tail, "for ") {
                let candidate = partition(&tail[k + 4..], " ").0;
                if is_msgid(candidate) {
                    self.p.msgid = Some(Cow::Borrowed(candidate));
                }
            }
        }
        true
    }

    fn w_queue(&mut self, rest: &'a str, tail: &'a str) -> bool {
        if !tail.starts_with("queue run") {
            return false;
        }
        self.p.kind = LineKind::QueueRun;
        self.p.detail = Some(Cow::Borrowed(if rest.starts_with('S') { "start" } else { "end" }));
        if let Some(k) = find(tail, "pid=") {
            let pid = partition(&tail[k + 4..], " ").0.trim_end_matches([',', ':']);
            self.set_extra("queue_runner_pid", pid);
            if self.p.pid.is_none() {
                self.p.pid = self.int_of(pid);
            }
        }
        true
    }

    fn w_smtp(&mut self, rest: &'a str, tail: &'a str) -> bool {
        if let Some(text) = tail.strip_prefix("connection identification ") {
            self.connection_identification(text);
            return true;
        }
        if let Some(text) = tail.strip_prefix("connection outbound ") {
            self.p.kind = LineKind::ConnectionOutbound;
            if self.only_correlated() && self.p.msgid.is_some() {
                return true; // the correlator reads no more of it (`Detail::Correlated`)
            }
            for (index, part) in split_space(text).enumerate() {
                match index {
                    0 => {
                        if is_digit_str(part) {
                            self.set_extra("timestamp", part);
                        }
                    }
                    1 => {
                        if self.p.msgid.is_none() && is_msgid(part) {
                            self.p.msgid = Some(Cow::Borrowed(part));
                        }
                    }
                    2 => self.p.cpanel_domain = Some(Cow::Borrowed(part)),
                    _ if index < MAX_ITEMS + 3 => {
                        if !part.is_empty() {
                            self.p.recipients.push(Cow::Borrowed(part));
                        }
                    }
                    _ => break,
                }
            }
            return true;
        }
        if tail.starts_with("connection from ") || tail.starts_with("call from ") {
            self.p.kind = LineKind::Connection;
            if self.skip_fields() {
                return true;
            }
            let detail = self.fullhost_after(tail, "from ");
            self.p.detail = Some(Cow::Borrowed(detail));
            return true;
        }
        if tail.starts_with("connection ") && contains_within(tail, " from ", 0, 80) {
            self.p.kind = LineKind::Connection;
            let stop = find(tail, " from ").unwrap_or(0);
            let head = if stop >= 11 { &tail[11..stop] } else { &tail[11..11] };
            with_tokens(head, |tokens| {
                self.session(tokens, 0);
            });
            let detail = self.fullhost_after(tail, " from ");
            self.p.detail = Some(Cow::Borrowed(detail));
            return true;
        }
        if starts_any(tail, &["command timeout", "data timeout", "incomplete transaction"]) {
            self.set_kind_detail(LineKind::Connection, tail);
            if contains(tail, " from ") {
                let after = self.fullhost_after(tail, " from ");
                if !after.is_empty() {
                    self.set_extra("after", after);
                }
            }
            return true;
        }
        if tail.starts_with("protocol ") || tail.starts_with("syntax error") {
            self.set_kind_detail(LineKind::Protocol, tail);
            if let Some(k) = find(tail, " H=") {
                with_tokens(&tail[k + 1..], |tokens| {
                    let j = self.session(tokens, 0);
                    let error = if j < tokens.len() { self.join(&tokens[j..]) } else { &tail[tail.len()..] };
                    self.p.error = Some(Cow::Borrowed(error));
                });
            }
            return true;
        }
        if tail.starts_with("error from remote mail") && self.p.msgid.is_some() {
            self.p.kind = LineKind::HostError;
            self.p.error = Some(Cow::Borrowed(rest));
            self.response(rest);
            return true;
        }
        false
    }

    /// cPanel: `SMTP connection identification H=... A=ip P=port M=msgid U=user ID=uid S=sender B=how`.
    fn connection_identification(&mut self, text: &'a str) {
        self.p.kind = LineKind::ConnectionIdent;
        with_tokens(text, |tokens| {
            let n = tokens.len();
            let mut i = 0;
            while i < n {
                let tok = tokens[i];
                i += 1;
                let Some(eq) = find_byte(tok, b'=').filter(|&eq| eq > 0) else { continue };
                let (tag, value) = (&tok[..eq], &tok[eq + 1..]);
                match tag {
                    "H" => i = self.take_host(tokens, i, value).0,
                    "U" => self.p.user = Some(Cow::Borrowed(value)),
                    "S" => self.p.sender = Some(Cow::Borrowed(value)),
                    "M" => {
                        self.set_extra("M", value);
                        if self.p.msgid.is_none() && is_msgid(value) {
                            self.p.msgid = Some(Cow::Borrowed(value));
                        }
                    }
                    "A" => {
                        self.set_extra("client_ip", value);
                        if self.p.host_ip.is_none() {
                            self.p.host_ip = Some(Cow::Borrowed(value));
                        }
                    }
                    "P" => {
                        self.set_extra("client_port", value);
                        if self.p.host_port.is_none() {
                            self.p.host_port = self.int_of(value);
                        }
                    }
                    _ => self.set_extra(tag, value),
                }
            }
        });
    }

    fn w_sender(&mut self, tail: &'a str) -> bool {
        let Some(fields) = tail.strip_prefix("identification ") else { return false };
        self.p.kind = LineKind::SenderIdent;
        for tok in split_space(fields) {
            let Some(eq) = find_byte(tok, b'=').filter(|&eq| eq > 0) else { continue };
            let (tag, value) = (&tok[..eq], &tok[eq + 1..]);
            match tag {
                "U" => self.p.user = Some(Cow::Borrowed(value)),
                "D" => self.p.cpanel_domain = Some(Cow::Borrowed(value)),
                "S" => self.p.sender = Some(Cow::Borrowed(value)),
                _ => self.set_extra(tag, value),
            }
        }
        true
    }

    fn w_no(&mut self, rest: &'a str, tail: &'a str) -> bool {
        if tail.starts_with("MAIL in SMTP connection from ") {
            self.p.kind = LineKind::Connection;
            self.p.detail = Some(Cow::Borrowed("no MAIL"));
            let after = self.fullhost_after(tail, "connection from ");
            if !after.is_empty() {
                self.set_extra("after", after);
            }
            return true;
        }
        if tail.starts_with("host name found") || tail.starts_with("IP address found") {
            self.set_kind_detail(LineKind::Connection, rest);
            let k = tail.rfind(" [");
            let space = tail.rfind(' ');
            if tail.starts_with("host name") && space.is_some_and(|s| s > 0) {
                let s = space.unwrap_or(0);
                self.p.host_ip = Some(Cow::Borrowed(&tail[s + 1..]));
            } else if let Some(k) = k.filter(|&k| k > 0) {
                let ip = partition(tail[k + 1..].trim_end_matches(')'), " ").0;
                self.ip_token(ip);
            }
            return true;
        }
        if tail.starts_with("immediate delivery") {
            let kind = self.info_or(LineKind::Daemon);
            self.set_kind_detail(kind, rest);
            return true;
        }
        false
    }

    fn w_tls(&mut self, rest: &'a str, tail: &'a str) -> bool {
        self.set_kind_detail(LineKind::Protocol, rest);
        for marker in ["connection from ", "connection to "] {
            if contains(tail, marker) {
                let after = self.fullhost_after(tail, marker);
                if !after.is_empty() {
                    self.p.error = Some(Cow::Borrowed(after.strip_prefix(": ").unwrap_or(after)));
                }
                break;
            }
        }
        self.p.smtp_phase = Some(Cow::Borrowed("starttls"));
        true
    }

    /// sa-exim: `SA: Action: flagged as Spam but accepted: score=8.2 required=5.0 ...`.
    fn w_sa(&mut self, tail: &'a str) -> bool {
        if !tail.starts_with("Action:") {
            return false;
        }
        self.p.kind = LineKind::SpamScore;
        if let Some(score) = spam_score_search(tail) {
            self.p.spam_score = py_float(score);
        }
        let action = partition(skip_char(tail, 8), ":").0;
        self.p.is_spam = Some(!contains(action, "isn't spam") && !contains(action, "not spam"));
        self.p.detail = Some(Cow::Borrowed(action));
        true
    }

    fn w_tls_problem(&mut self, rest: &'a str, tail: &'a str) -> bool {
        if self.p.msgid.is_some() && (contains(tail, "connection to ") || contains(tail, "lookup for ")) {
            self.p.kind = LineKind::HostError;
            self.p.error = Some(Cow::Borrowed(rest));
            if contains(rest, "connection to ") {
                self.fullhost_after(rest, "connection to ");
            }
            self.p.smtp_phase = Some(Cow::Borrowed("starttls"));
            return true;
        }
        self.set_kind_detail(LineKind::Protocol, rest);
        self.p.smtp_phase = Some(Cow::Borrowed("starttls"));
        true
    }

    /// `[ip] SSL verify error: ...` written while a TLS session to or from [ip] starts.
    fn bracket_ip(&mut self, rest: &'a str, tail: &'a str) -> bool {
        if !tail.starts_with("SSL verify") {
            return false;
        }
        self.ip_token(partition(rest, " ").0);
        self.set_kind_detail(LineKind::Protocol, tail);
        self.p.smtp_phase = Some(Cow::Borrowed("starttls"));
        true
    }
}

/// What `take_host` finds in the usual shapes.
struct FastHost<'a> {
    host: Option<&'a str>,
    helo: Option<&'a str>,
    ip: &'a str,
    port: Option<i64>,
    /// Just after the `[ip]:port` token.
    end: usize,
}

/// The end of the space-separated word of `b` starting at `from` (words are short: sixteen bytes a step,
/// without the set-up of a long search).
#[inline]
fn word_end(b: &[u8], from: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        let mut at = from;
        while at + 16 <= b.len() {
            // SAFETY: the 16 bytes at `at` are in bounds (checked above); the load is unaligned.
            let found = unsafe {
                let block = _mm_loadu_si128(b.as_ptr().add(at).cast());
                _mm_movemask_epi8(_mm_cmpeq_epi8(block, _mm_set1_epi8(b' ' as i8))) as u32
            };
            if found != 0 {
                return at + found.trailing_zeros() as usize;
            }
            at += 16;
        }
        b[at..].iter().position(|&c| c == b' ').map_or(b.len(), |k| at + k)
    }
    #[cfg(not(target_arch = "x86_64"))]
    b[from..].iter().position(|&c| c == b' ').map_or(b.len(), |k| from + k)
}

fn has_byte(b: &[u8], byte: u8) -> bool {
    super::parser_text::position(b, byte).is_some()
}

/// `take_host` of the token starting at `at` of `s` and those after it, for `[ip]:port`, `name [ip]:port`,
/// `(helo) [ip]:port` and `name (helo) [ip]:port` (single spaces, a decimal port or none); None for any
/// other shape.
fn fast_host(s: &str, at: usize) -> Option<FastHost<'_>> {
    let b = s.as_bytes();
    let mut at = at;
    let mut host = None;
    let mut helo = None;
    let group_at = |at: usize| -> Option<usize> {
        // a one-token `(helo)` group at `at`, followed by a single space and `[`
        let end = word_end(b, at);
        let group = &b[at..end];
        (group.len() >= 2 && group[group.len() - 1] == b')' && b.get(end + 1) == Some(&b'[')).then_some(end)
    };
    match b.get(at) {
        Some(b'[') => {}
        Some(b'(') => {
            let end = group_at(at)?;
            helo = Some(&s[at + 1..end - 1]);
            at = end + 1;
        }
        Some(_) => {
            let end = word_end(b, at);
            let name = &b[at..end];
            if name.is_empty() || end == b.len() || has_byte(name, b'[') || name[name.len() - 1] == b':' {
                return None;
            }
            host = Some(&s[at..end]);
            at = end + 1;
            match b.get(at) {
                Some(b'[') => {}
                Some(b'(') => {
                    let end = group_at(at)?;
                    helo = Some(&s[at + 1..end - 1]);
                    at = end + 1;
                }
                _ => return None,
            }
        }
        None => return None,
    }
    // the `[ip]:port` token
    let end = word_end(b, at);
    let token = &b[at..end];
    let close = super::parser_text::position(token, b']')?;
    // `ip_token`: a ':' glued to the end (a separator) is dropped first
    let after = &token[close + 1..];
    let after = after.strip_suffix(b":").unwrap_or(after);
    let port = match after {
        [] => None,
        [b':', digits @ ..] if (1..=17).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) => {
            Some(digits.iter().fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0')))
        }
        _ => return None,
    };
    Some(FastHost { host, helo, ip: &s[at + 1..at + close], port, end })
}

/// `_session`'s tags from the space at `pos` of `s` on: up to four single-spaced ASCII tags without quotes
/// (none of them `H=`, an `S=` only of digits), then the text from the first other word (empty at the
/// end). None for any other shape.
#[allow(clippy::type_complexity)]
fn fast_tags(s: &str, mut pos: usize) -> Option<([(&str, &str); 4], usize, &str)> {
    let b = s.as_bytes();
    let mut tags: [(&str, &str); 4] = [("", ""); 4];
    let mut count = 0;
    loop {
        if pos == b.len() {
            return Some((tags, count, &s[pos..]));
        }
        let from = pos + 1;
        let stop = word_end(b, from);
        let tok = &b[from..stop];
        let &first = tok.first()?;
        let eq = tok[..tok.len().min(7)].iter().position(|&c| c == b'=');
        match eq {
            Some(eq) if eq > 0 && first.is_ascii_uppercase() => {
                let tag = &tok[..eq];
                let value = &tok[eq + 1..];
                if count == tags.len() || !tok.is_ascii() || value.first() == Some(&b'"') || tag == b"H" {
                    return None;
                }
                let decimal = (1..=17).contains(&value.len()) && value.iter().all(u8::is_ascii_digit);
                if tag == b"S" && !decimal {
                    return None;
                }
                tags[count] = (&s[from..from + eq], &s[from + eq + 1..stop]);
                count += 1;
                pos = stop;
            }
            _ => {
                if first >= 0x80 || (first.is_ascii_uppercase() && has_byte(tok, b'=')) {
                    return None;
                }
                return Some((tags, count, &s[from..]));
            }
        }
    }
}
