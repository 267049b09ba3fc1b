//! Bounds on a YAML file from an untrusted package, checked before the file
//! reaches the YAML parser.
//!
//! serde_yaml offers no setting for any of this: its recursion limit (128)
//! is applied only after libyaml has produced every event of the document,
//! and libyaml's scanner spends time quadratic in the flow nesting depth (it
//! revisits every open `[`/`{` level at each token). A 316 KB manifest of
//! 200 000 nested `{a: ` kept a core busy for minutes before failing. Its
//! alias guard (100 replays per event) still lets a few hundred kilobytes
//! of aliases expand into gigabytes of cloned scalars.
//!
//! So [`check`] makes one linear pass over the bytes first. It follows
//! libyaml's own scanner (`unsafe-libyaml` `scanner.rs`) closely enough to
//! know which bytes are quoted, commented or inside a block or plain scalar,
//! and from that the nesting depth (block indentation levels plus flow
//! collections) and the size of the document with every alias expanded.
//! Wherever the pass and libyaml could disagree, the pass errs towards a
//! larger figure, never a smaller one; past the point where libyaml itself
//! fails, what the pass concludes no longer matters.

use std::collections::HashMap;

use super::PackageError;

/// Largest YAML file accepted. The largest manifests and provider or model
/// YAMLs of the marketplace are tens of kilobytes; 1 MiB leaves a wide
/// margin and keeps every later pass over the file cheap.
pub const MAX_YAML_BYTES: usize = 1024 * 1024;

/// Deepest nesting accepted, counting block indentation levels and flow
/// collections. Real declarations nest under 16 levels (a tool's
/// parameters, their options and labels, or an output JSON schema), and
/// serde_yaml itself gives up at 128.
pub const MAX_YAML_DEPTH: usize = 64;

/// Largest size of a file with every alias replaced by the text of its
/// anchored node. Anchors are rare in declarations; four times the file
/// limit allows any honest reuse and refuses "billion laughs".
pub const MAX_YAML_EXPANDED_BYTES: u64 = 4 * MAX_YAML_BYTES as u64;

/// Refuses `bytes` (the content of `file`) when it is larger, deeper or
/// expands further than the limits above. Linear in the size of the file.
pub fn check(file: &str, bytes: &[u8]) -> Result<(), PackageError> {
    let refuse = |reason: String| PackageError::YamlLimit {
        file: file.to_owned(),
        reason,
    };
    if bytes.len() > MAX_YAML_BYTES {
        return Err(refuse(format!(
            "it is {} bytes, a YAML file may have at most {MAX_YAML_BYTES}",
            bytes.len()
        )));
    }
    // libyaml reads UTF-16 when the file starts with its byte order mark;
    // the pass below reads UTF-8 only, so such a file is refused (no
    // declaration is written in UTF-16).
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(refuse("it is UTF-16; YAML files must be UTF-8".into()));
    }
    // libyaml drops a leading UTF-8 byte order mark before counting
    // offsets.
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    Scanner::new(bytes)
        .run()
        .map(drop)
        .map_err(|e| refuse(e.to_string()))
}

/// Why the pass refused a file.
#[derive(Debug, thiserror::Error)]
enum Exceeded {
    #[error("it nests deeper than {MAX_YAML_DEPTH} levels (line {0})")]
    Depth(usize),
    #[error("its aliases expand it beyond {MAX_YAML_EXPANDED_BYTES} bytes (line {0})")]
    Expansion(usize),
    #[error("alias *{name} at line {line} refers to the node that contains it")]
    SelfAlias { name: String, line: usize },
    #[error("more than {MAX_YAML_DEPTH} anchored nodes are open at line {0}")]
    OpenAnchors(usize),
}

/// A block indentation level (libyaml's `indents` stack).
struct Level {
    column: usize,
    /// Opened by a `-` entry rather than a mapping key.
    sequence: bool,
    /// A mapping at this column holds a sequence whose `-` entries sit at
    /// the mapping's own column (YAML's indentless sequence): one more
    /// level of nesting without one more indentation level.
    indentless: bool,
}

/// Where a possible simple key (a mapping key not introduced by `?`)
/// started, at flow level 0 (libyaml's `simple_keys` bottom entry).
#[derive(Clone, Copy)]
struct SimpleKey {
    column: usize,
    line: usize,
    index: usize,
}

/// How far an anchored node reaches.
#[derive(PartialEq)]
enum Extent {
    /// The node has not begun yet: the next token decides.
    Pending,
    /// A flow collection; ends when the flow level is back to this.
    Flow(usize),
    /// A block collection; ends at the first line that starts left of
    /// its parent's column, or at that column with anything but a `-`
    /// entry of an indentless sequence.
    Block,
    /// A scalar or an alias; ends with that token.
    Scalar,
}

struct OpenAnchor {
    name: Vec<u8>,
    /// The expanded offset where the node began.
    start: u64,
    /// The column of the enclosing block collection (-1 at the top).
    parent_indent: isize,
    /// Whether that collection is a sequence.
    parent_sequence: bool,
    line: usize,
    extent: Extent,
}

/// The kinds of token that matter to anchors.
#[derive(Clone, Copy, PartialEq)]
enum Token {
    FlowStart,
    FlowEnd,
    FlowEntry,
    BlockIndicator,
    Value,
    Property,
    Anchor,
    Scalar,
    DocumentMarker,
}

struct Scanner<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
    column: usize,
    flow: usize,
    /// One entry per open flow collection: whether it is a sequence, and
    /// whether it holds a `key: value` pair, which YAML reads as a
    /// one-pair mapping nested in the sequence.
    flow_levels: Vec<(bool, bool)>,
    flow_pairs: usize,
    indents: Vec<Level>,
    indentless: usize,
    key: Option<SimpleKey>,
    simple_key_allowed: bool,
    /// Only blanks since the last line break (or the start).
    fresh_line: bool,
    /// Bytes that aliases stand for beyond the file's own bytes.
    extra: u64,
    /// Closed anchors and the expanded size of their node.
    anchors: HashMap<Vec<u8>, u64>,
    open: Vec<OpenAnchor>,
    /// The deepest nesting seen.
    max_depth: usize,
}

fn is_blank(b: Option<u8>) -> bool {
    matches!(b, Some(b' ' | b'\t'))
}

fn is_flow_indicator(b: Option<u8>) -> bool {
    matches!(b, Some(b',' | b'[' | b']' | b'{' | b'}'))
}

/// Whether an anchor or alias name may hold `b` (libyaml's `IS_ALPHA`).
fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl<'a> Scanner<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self {
            s,
            pos: 0,
            line: 1,
            column: 0,
            flow: 0,
            flow_levels: Vec::new(),
            flow_pairs: 0,
            indents: Vec::new(),
            indentless: 0,
            key: None,
            simple_key_allowed: true,
            fresh_line: true,
            extra: 0,
            anchors: HashMap::new(),
            open: Vec::new(),
            max_depth: 0,
        }
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.s.get(self.pos + offset).copied()
    }

    fn cur(&self) -> Option<u8> {
        self.at(0)
    }

    /// The length of the line break at `pos + offset`, if there is one
    /// (libyaml's `IS_BREAK`: CR, LF, CR LF, NEL, LS and PS).
    fn break_len_at(&self, offset: usize) -> Option<usize> {
        let rest = self.s.get(self.pos + offset..).unwrap_or_default();
        match rest {
            [b'\r', b'\n', ..] => Some(2),
            [b'\r' | b'\n', ..] => Some(1),
            [0xC2, 0x85, ..] => Some(2),
            [0xE2, 0x80, 0xA8 | 0xA9, ..] => Some(3),
            _ => None,
        }
    }

    fn is_break(&self) -> bool {
        self.break_len_at(0).is_some()
    }

    fn is_blankz_at(&self, offset: usize) -> bool {
        let b = self.at(offset);
        b.is_none() || is_blank(b) || self.break_len_at(offset).is_some()
    }

    fn is_breakz(&self) -> bool {
        self.cur().is_none() || self.is_break()
    }

    /// Moves past one character (a line break counts as one).
    fn skip(&mut self) {
        if let Some(n) = self.break_len_at(0) {
            self.pos += n;
            self.line += 1;
            self.column = 0;
            self.fresh_line = true;
        } else if self.pos < self.s.len() {
            if !is_blank(self.cur()) {
                self.fresh_line = false;
            }
            self.pos += 1;
            while self.pos < self.s.len() && self.s[self.pos] & 0xC0 == 0x80 {
                self.pos += 1;
            }
            self.column += 1;
        }
    }

    fn skip_to_breakz(&mut self) {
        while !self.is_breakz() {
            self.skip();
        }
    }

    /// libyaml's `indent`: the column of the innermost block collection.
    fn indent(&self) -> isize {
        self.indents.last().map_or(-1, |l| l.column as isize)
    }

    fn depth(&self) -> usize {
        // A flow collection that may be a mapping key will sit inside the
        // mapping its `:` opens.
        let pending_mapping = usize::from(self.flow > 0 && self.key.is_some());
        self.indents.len() + self.indentless + self.flow + self.flow_pairs + pending_mapping
    }

    fn check_depth(&mut self) -> Result<(), Exceeded> {
        self.max_depth = self.max_depth.max(self.depth());
        if self.depth() > MAX_YAML_DEPTH {
            return Err(Exceeded::Depth(self.line));
        }
        Ok(())
    }

    /// The expanded offset of the current position.
    fn expanded(&self) -> u64 {
        self.pos as u64 + self.extra
    }

    /// Scans the whole file; returns the deepest nesting seen.
    fn run(mut self) -> Result<usize, Exceeded> {
        loop {
            self.scan_to_next_token();
            self.stale_simple_key();
            if self.flow == 0 {
                self.unroll(self.column as isize);
            }
            let Some(c) = self.cur() else { break };
            if self.fresh_line && self.flow == 0 {
                self.settle_pending_anchor();
                self.close_block_anchors(c == b'-' && self.is_blankz_at(1));
            }
            self.token(c)?;
        }
        let end = self.expanded();
        for anchor in std::mem::take(&mut self.open) {
            self.anchors.insert(anchor.name, end - anchor.start);
        }
        Ok(self.max_depth)
    }

    /// Whitespace, comments and line breaks (libyaml's
    /// `scan_to_next_token`).
    fn scan_to_next_token(&mut self) {
        loop {
            while self.cur() == Some(b' ')
                || ((self.flow > 0 || !self.simple_key_allowed) && self.cur() == Some(b'\t'))
            {
                self.skip();
            }
            if self.cur() == Some(b'#') {
                self.skip_to_breakz();
            }
            if !self.is_break() {
                break;
            }
            self.skip();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn stale_simple_key(&mut self) {
        if let Some(k) = self.key {
            if k.line < self.line || k.index + 1024 < self.pos {
                self.key = None;
            }
        }
    }

    fn save_simple_key(&mut self) {
        if self.flow == 0 && self.simple_key_allowed {
            self.key = Some(SimpleKey {
                column: self.column,
                line: self.line,
                index: self.pos,
            });
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow == 0 {
            self.key = None;
        }
    }

    fn roll(&mut self, column: usize, sequence: bool) -> Result<(), Exceeded> {
        if self.flow > 0 {
            return Ok(());
        }
        if self.indent() < column as isize {
            self.indents.push(Level {
                column,
                sequence,
                indentless: false,
            });
        } else if let Some(top) = self.indents.last_mut().filter(|t| t.column == column) {
            if sequence && !top.sequence && !top.indentless {
                top.indentless = true;
                self.indentless += 1;
            } else if !sequence && top.indentless {
                top.indentless = false;
                self.indentless -= 1;
            }
        }
        self.check_depth()
    }

    /// A `?` or `:` in a flow sequence opens a one-pair mapping there.
    fn flow_pair(&mut self) -> Result<(), Exceeded> {
        if let Some((true, pair @ false)) = self.flow_levels.last_mut() {
            *pair = true;
            self.flow_pairs += 1;
            return self.check_depth();
        }
        Ok(())
    }

    fn unroll(&mut self, column: isize) {
        while self.indent() > column {
            if self.indents.pop().is_some_and(|l| l.indentless) {
                self.indentless -= 1;
            }
        }
    }

    fn token(&mut self, c: u8) -> Result<(), Exceeded> {
        let start_line = self.line;
        if self.column == 0 && c == b'%' {
            self.unroll(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            self.skip_to_breakz();
            self.skip();
            return Ok(());
        }
        if self.column == 0
            && (self.s[self.pos..].starts_with(b"---") || self.s[self.pos..].starts_with(b"..."))
            && self.is_blankz_at(3)
        {
            self.before(Token::DocumentMarker);
            while let Some(anchor) = self.open.pop() {
                self.close(anchor);
            }
            self.unroll(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            for _ in 0..3 {
                self.skip();
            }
            return Ok(());
        }
        match c {
            b'[' | b'{' => {
                self.before(Token::FlowStart);
                self.save_simple_key();
                self.flow += 1;
                self.flow_levels.push((c == b'[', false));
                self.check_depth()?;
                self.simple_key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.before(Token::FlowEnd);
                self.remove_simple_key();
                self.flow = self.flow.saturating_sub(1);
                if self.flow_levels.pop().is_some_and(|(_, pair)| pair) {
                    self.flow_pairs -= 1;
                }
                self.simple_key_allowed = false;
                self.skip();
                self.close_flow_anchors();
            }
            b',' => {
                self.before(Token::FlowEntry);
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'-' if self.is_blankz_at(1) => {
                self.before(Token::BlockIndicator);
                self.roll(self.column, true)?;
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'?' if self.flow > 0 || self.is_blankz_at(1) => {
                self.before(Token::BlockIndicator);
                self.roll(self.column, false)?;
                self.flow_pair()?;
                self.remove_simple_key();
                self.simple_key_allowed = self.flow == 0;
                self.skip();
            }
            b':' if self.flow > 0 || self.is_blankz_at(1) => {
                self.before(Token::Value);
                self.flow_pair()?;
                match self.key.take().filter(|_| self.flow == 0) {
                    Some(key) => {
                        self.roll(key.column, false)?;
                        self.simple_key_allowed = false;
                    }
                    None => {
                        self.roll(self.column, false)?;
                        self.simple_key_allowed = self.flow == 0;
                    }
                }
                self.skip();
            }
            b'*' => {
                self.before(Token::Scalar);
                self.save_simple_key();
                self.simple_key_allowed = false;
                let name = self.name();
                self.alias(name, start_line)?;
                self.after_scalar();
            }
            b'&' => {
                self.before(Token::Anchor);
                self.save_simple_key();
                self.simple_key_allowed = false;
                let start = self.expanded();
                let name = self.name();
                if self.open.len() >= MAX_YAML_DEPTH {
                    return Err(Exceeded::OpenAnchors(start_line));
                }
                self.open.push(OpenAnchor {
                    name,
                    start,
                    parent_indent: self.indent(),
                    parent_sequence: self.indents.last().is_some_and(|l| l.sequence),
                    line: start_line,
                    extent: Extent::Pending,
                });
            }
            b'!' => {
                self.before(Token::Property);
                self.save_simple_key();
                self.simple_key_allowed = false;
                // A tag ends at a blank (or a `,` in flow context); libyaml
                // fails on anything else after it.
                while !(self.is_blankz_at(0) || (self.flow > 0 && self.cur() == Some(b','))) {
                    self.skip();
                }
            }
            b'|' | b'>' if self.flow == 0 => {
                self.before(Token::Scalar);
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.block_scalar();
                self.after_scalar();
            }
            b'\'' | b'"' => {
                self.before(Token::Scalar);
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.quoted(c == b'\'');
                self.after_scalar();
            }
            _ => {
                // Whatever libyaml cannot start a token with makes it fail;
                // reading it as plain text from here is as good as anything.
                self.before(Token::Scalar);
                self.save_simple_key();
                self.simple_key_allowed = false;
                if self.plain() {
                    self.simple_key_allowed = true;
                }
                self.after_scalar();
            }
        }
        Ok(())
    }

    /// An anchor or alias name after its `&` or `*`.
    fn name(&mut self) -> Vec<u8> {
        self.skip();
        let start = self.pos;
        while self.cur().is_some_and(is_name_char) {
            self.skip();
        }
        self.s[start..self.pos].to_vec()
    }

    fn alias(&mut self, name: Vec<u8>, line: usize) -> Result<(), Exceeded> {
        if self.open.iter().any(|a| a.name == name) {
            return Err(Exceeded::SelfAlias {
                name: String::from_utf8_lossy(&name).into_owned(),
                line,
            });
        }
        // An unknown alias makes serde_yaml fail; it stands for nothing.
        self.extra += self.anchors.get(&name).copied().unwrap_or(0);
        if self.expanded() > MAX_YAML_EXPANDED_BYTES {
            return Err(Exceeded::Expansion(line));
        }
        Ok(())
    }

    /// In block context a node that starts on a later line than its anchor
    /// is a block collection.
    fn settle_pending_anchor(&mut self) {
        let line = self.line;
        if let Some(top) = self
            .open
            .last_mut()
            .filter(|a| a.extent == Extent::Pending && a.line < line)
        {
            top.extent = Extent::Block;
        }
    }

    /// Settles what a pending anchor's node is, now that the next token is
    /// `token`.
    fn before(&mut self, token: Token) {
        let flow = self.flow;
        let Some(top) = self.open.last_mut() else {
            return;
        };
        if top.extent != Extent::Pending {
            return;
        }
        match token {
            Token::Property => {}
            Token::FlowStart => top.extent = Extent::Flow(flow),
            Token::Scalar => top.extent = Extent::Scalar,
            Token::BlockIndicator => top.extent = Extent::Block,
            // The anchored node is empty.
            Token::FlowEnd
            | Token::FlowEntry
            | Token::Value
            | Token::Anchor
            | Token::DocumentMarker => {
                let anchor = self.open.pop().expect("an open anchor");
                self.close(anchor);
            }
        }
    }

    fn close(&mut self, anchor: OpenAnchor) {
        let weight = self.expanded() - anchor.start;
        self.anchors.insert(anchor.name, weight);
    }

    fn after_scalar(&mut self) {
        while self.open.last().is_some_and(|a| a.extent == Extent::Scalar) {
            let anchor = self.open.pop().expect("an open anchor");
            self.close(anchor);
        }
    }

    fn close_flow_anchors(&mut self) {
        while let Some(top) = self.open.last() {
            match top.extent {
                Extent::Flow(level) if self.flow <= level => {
                    let anchor = self.open.pop().expect("an open anchor");
                    self.close(anchor);
                }
                _ => break,
            }
        }
    }

    /// At the first token of a line in block context: closes the anchored
    /// block collections that this line leaves.
    fn close_block_anchors(&mut self, block_entry: bool) {
        let column = self.column as isize;
        while let Some(top) = self.open.last() {
            // An entry of the enclosing sequence, or anything but an entry
            // of an indentless sequence at the enclosing mapping's column.
            let leaves = column < top.parent_indent
                || (column == top.parent_indent && (!block_entry || top.parent_sequence));
            if top.extent == Extent::Block && leaves {
                let anchor = self.open.pop().expect("an open anchor");
                self.close(anchor);
            } else {
                break;
            }
        }
    }

    /// A single- or double-quoted scalar, quotes included.
    fn quoted(&mut self, single: bool) {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        while let Some(b) = self.cur() {
            if single && b == b'\'' && self.at(1) == Some(b'\'') {
                self.skip();
                self.skip();
            } else if b == quote {
                self.skip();
                return;
            } else if !single && b == b'\\' {
                self.skip();
                self.skip();
            } else {
                self.skip();
            }
        }
    }

    /// A plain scalar (libyaml's `scan_plain_scalar`). Returns whether it
    /// ended after a line break.
    fn plain(&mut self) -> bool {
        let indent = self.indent() + 1;
        let mut leading_blanks = false;
        loop {
            if self.column == 0
                && (self.s[self.pos..].starts_with(b"---")
                    || self.s[self.pos..].starts_with(b"..."))
                && self.is_blankz_at(3)
            {
                break;
            }
            if self.cur() == Some(b'#') {
                break;
            }
            while !self.is_blankz_at(0) {
                let c = self.cur();
                if c == Some(b':')
                    && (self.is_blankz_at(1)
                        || (self.flow > 0
                            && matches!(self.at(1), Some(b',' | b'?' | b'[' | b']' | b'{' | b'}'))))
                {
                    return leading_blanks;
                }
                if self.flow > 0 && is_flow_indicator(c) {
                    return leading_blanks;
                }
                self.skip();
            }
            if !(is_blank(self.cur()) || self.is_break()) {
                break;
            }
            while is_blank(self.cur()) || self.is_break() {
                if self.is_break() {
                    leading_blanks = true;
                }
                self.skip();
            }
            if self.flow == 0 && (self.column as isize) < indent {
                break;
            }
        }
        leading_blanks
    }

    /// A literal or folded block scalar (libyaml's `scan_block_scalar`).
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0usize;
        let digit = |b: Option<u8>| b.filter(u8::is_ascii_digit).map(|d| (d - b'0') as usize);
        if matches!(self.cur(), Some(b'+' | b'-')) {
            self.skip();
            if let Some(d) = digit(self.cur()) {
                increment = d;
                self.skip();
            }
        } else if let Some(d) = digit(self.cur()) {
            increment = d;
            self.skip();
            if matches!(self.cur(), Some(b'+' | b'-')) {
                self.skip();
            }
        }
        while is_blank(self.cur()) {
            self.skip();
        }
        if self.cur() == Some(b'#') {
            self.skip_to_breakz();
        }
        if !self.is_breakz() {
            // libyaml fails here.
            return;
        }
        self.skip();
        let parent = self.indent();
        let mut indent = match increment {
            0 => 0,
            n if parent >= 0 => parent as usize + n,
            n => n,
        };
        if !self.block_scalar_breaks(&mut indent, parent) {
            return;
        }
        while self.column == indent && self.cur().is_some() {
            self.skip_to_breakz();
            if self.cur().is_none() {
                break;
            }
            self.skip();
            if !self.block_scalar_breaks(&mut indent, parent) {
                return;
            }
        }
    }

    /// Indentation and empty lines of a block scalar; settles `indent`
    /// when it is still 0. Returns false where libyaml fails (a tab
    /// where indentation is expected).
    fn block_scalar_breaks(&mut self, indent: &mut usize, parent: isize) -> bool {
        let mut max_indent = 0usize;
        loop {
            while (*indent == 0 || self.column < *indent) && self.cur() == Some(b' ') {
                self.skip();
            }
            max_indent = max_indent.max(self.column);
            if (*indent == 0 || self.column < *indent) && self.cur() == Some(b'\t') {
                return false;
            }
            if !self.is_break() {
                break;
            }
            self.skip();
        }
        if *indent == 0 {
            *indent = max_indent.max((parent + 1).max(1) as usize);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(yaml: &str) -> String {
        match check("f.yaml", yaml.as_bytes()) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted: {yaml:.200}"),
        }
    }

    fn nested_flow(depth: usize) -> String {
        "{a: ".repeat(depth) + "1" + &"}".repeat(depth)
    }

    fn nested_block(depth: usize) -> String {
        (0..depth)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect::<String>()
            + &"  ".repeat(depth)
            + "x\n"
    }

    #[test]
    fn ordinary_declarations_pass() {
        let yaml = r#"
version: 0.0.1
type: plugin
author: "langgenius"
label: {en_US: Echo, zh_Hans: '回声'}
tags: [search, 'a]b', "c}d"]
description:
  en_US: |
    Echo [what] you {say}: it's
    - simple
  zh_Hans: >-
    folded [text
plugins:
  tools:
    - provider/echo.yaml
params:
- name: x   # a comment with [ and {
  options: [{value: a, label: {en_US: A}}, {value: b}]
- name: y
  default: it's [plain] {text}
"#;
        check("manifest.yaml", yaml.as_bytes()).unwrap();
        serde_yaml::from_str::<serde_yaml::Value>(yaml).unwrap();
    }

    #[test]
    fn depth_is_bounded_in_flow_and_block_style() {
        check("f", nested_flow(MAX_YAML_DEPTH).as_bytes()).unwrap();
        assert!(refused(&nested_flow(MAX_YAML_DEPTH + 1)).contains("nests deeper than 64"));
        check("f", nested_block(MAX_YAML_DEPTH - 1).as_bytes()).unwrap();
        assert!(refused(&nested_block(MAX_YAML_DEPTH + 1)).contains("nests deeper"));
        assert!(refused(&("- ".repeat(100) + "x")).contains("nests deeper"));
        assert!(refused(&"[\n".repeat(100)).contains("nests deeper"));
    }

    #[test]
    fn indentless_sequences_count_as_levels() {
        let yaml: String = (0..MAX_YAML_DEPTH)
            .map(|i| format!("{}- k{i}:\n", "  ".repeat(i)))
            .collect();
        assert!(refused(&yaml).contains("nests deeper"));
    }

    #[test]
    fn brackets_hidden_from_libyaml_are_not_counted() {
        let deep = "[".repeat(200);
        for yaml in [
            format!("a: '{deep}'\n"),
            format!("a: \"{deep}\\\" {deep}\"\n"),
            format!("a: 1 # {deep}\n"),
            format!("a: |\n  {deep}\n  more {deep}\nb: 1\n"),
            format!("a: plain{deep}\n  continued {deep}\n"),
            format!("- >2\n    {deep}\n- x\n"),
        ] {
            check("f", yaml.as_bytes()).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            // libyaml agrees: the brackets are text.
            serde_yaml::from_str::<serde_yaml::Value>(&yaml)
                .unwrap_or_else(|e| panic!("{yaml}: {e}"));
        }
    }

    #[test]
    fn brackets_libyaml_reads_are_counted() {
        let deep = "[".repeat(200);
        for yaml in [
            // The quote is inside a plain scalar, not the start of one.
            format!("a: don't\nb: {deep}\n"),
            // The block scalar ends where its indentation does.
            format!("- - |\n      text\n  - {deep}\n"),
            format!("a: |\n  text\nb: {deep}\n"),
            // `#` starts a comment only after a blank.
            format!("a: b#c\nd: {deep}\n"),
            // A tab after `key:` is a separator.
            format!("a:\t{deep}\n"),
            // A byte order mark is not content.
            format!("\u{feff}a: {deep}\n"),
        ] {
            assert!(refused(&yaml).contains("nests deeper"), "{yaml}");
            // libyaml agrees: it nests them.
            let err = serde_yaml::from_str::<serde_yaml::Value>(&yaml).unwrap_err();
            assert!(err.to_string().contains("recursion limit"), "{yaml}: {err}");
        }
    }

    #[test]
    fn size_is_bounded() {
        let big = "a: ".to_string() + &"x".repeat(MAX_YAML_BYTES);
        assert!(refused(&big).contains("at most 1048576"));
    }

    #[test]
    fn utf16_is_refused() {
        let err = check("f", &[0xFF, 0xFE, b'a', 0]).unwrap_err().to_string();
        assert!(err.contains("UTF-16"), "{err}");
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut yaml = String::from("a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
        for i in 1..10 {
            let p = i - 1;
            yaml.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(refused(&yaml).contains("aliases expand"));
    }

    #[test]
    fn a_large_scalar_aliased_many_times_is_refused() {
        let mut yaml = format!("big: &big {}\nlist:\n", "x".repeat(500_000));
        for _ in 0..10 {
            yaml.push_str("- *big\n");
        }
        assert!(refused(&yaml).contains("aliases expand"));
    }

    #[test]
    fn block_anchors_weigh_their_node_only() {
        let mut yaml = String::from("base: &base\n  a: 1\n  b: 2\nother: ");
        yaml.push_str(&"x".repeat(100_000));
        yaml.push('\n');
        yaml.push_str("uses:\n");
        for _ in 0..1000 {
            yaml.push_str("- *base\n");
        }
        check("f", yaml.as_bytes()).unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(value["uses"][999]["b"], 2);
    }

    #[test]
    fn self_referencing_aliases_are_refused() {
        assert!(refused("a: &a [1, *a]\n").contains("refers to the node that contains it"));
    }

    fn value_depth(v: &serde_yaml::Value) -> usize {
        use serde_yaml::Value;
        match v {
            Value::Sequence(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
            Value::Mapping(map) => {
                1 + map
                    .iter()
                    .map(|(k, v)| value_depth(k).max(value_depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            Value::Tagged(t) => value_depth(&t.value),
            _ => 0,
        }
    }

    /// Random YAML-like text: wherever libyaml parses it, the pass never
    /// reports a shallower nesting than the parsed value has.
    #[test]
    fn the_pass_never_sees_less_nesting_than_libyaml() {
        const PIECES: [&str; 24] = [
            "[", "]", "{", "}", ", ", ": ", ":", "- ", "? ", "'", "\"", "#", "| ", ">-", "\n",
            "  ", "a", "b c", "\\", "!t ", "\t", "---\n", "&x ", "\n  ",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut parsed = 0;
        for _ in 0..100_000 {
            let len = 4 + next() % 40;
            let text: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
                continue;
            };
            parsed += 1;
            let ours = Scanner::new(text.as_bytes()).run().unwrap();
            assert!(ours >= value_depth(&value), "{text:?}: {ours} < {value:?}");
        }
        println!("parsed {parsed}");
        assert!(parsed > 1000, "only {parsed} inputs parsed");
    }

    #[test]
    fn the_probe_manifest_is_refused_at_once() {
        let yaml = nested_flow(200_000);
        let started = std::time::Instant::now();
        assert!(refused(&yaml).contains("nests deeper"));
        println!("{} bytes refused in {:?}", yaml.len(), started.elapsed());
    }
}
