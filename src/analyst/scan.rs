//! scan: one pass over a JSON text that checks it as strictly as serde_json
//! does and hands back where an object's fields are, without building any of
//! them. The replay reads each recorded line with it: the envelope's parts
//! and the few event fields it needs before the run, in one pass.

/// Why a text is not JSON, with the byte column (1-based) where it stops being JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    pub column: usize,
    pub expected: &'static str,
}

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expected {} at column {}", self.expected, self.column)
    }
}

/// How many arrays and objects serde_json lets nest, one inside another.
const MAX_DEPTH: usize = 127;

/// A JSON text being read.
pub struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

/// A field name as written between its quotes, and whether it has escapes
/// (then it must be unescaped before it is compared).
#[derive(Debug, Clone, Copy)]
pub struct Name<'a> {
    pub raw: &'a [u8],
    pub escaped: bool,
}

impl<'a> Name<'a> {
    /// Whether the name is `want`: length and first byte compared inline
    /// (most names differ there), the rest only when both agree.
    #[inline]
    pub fn is(&self, want: &str) -> bool {
        if !self.escaped {
            let want = want.as_bytes();
            return self.raw.len() == want.len()
                && self.raw.first() == want.first()
                && self.raw == want;
        }
        self.is_escaped(want)
    }

    #[cold]
    fn is_escaped(&self, want: &str) -> bool {
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).is_ok_and(|n| n == want)
    }
}

impl<'a> Scan<'a> {
    pub fn new(text: &'a [u8]) -> Scan<'a> {
        Scan { text, at: 0 }
    }

    /// Checks that the whole text is one JSON value, and returns it.
    pub fn whole(text: &'a [u8]) -> Result<&'a [u8], NotJson> {
        let mut scan = Scan::new(text);
        let value = scan.value()?;
        scan.end()?;
        Ok(value)
    }

    /// Reads one value (after any white space) and returns its text.
    pub fn value(&mut self) -> Result<&'a [u8], NotJson> {
        self.space();
        let start = self.at;
        self.skip(0)?;
        Ok(&self.text[start..self.at])
    }

    /// Nothing but white space is left.
    pub fn end(&mut self) -> Result<(), NotJson> {
        self.space();
        match self.at == self.text.len() {
            true => Ok(()),
            false => Err(self.fail("the end of the text")),
        }
    }

    /// How far the scan has read, as a byte offset into the text.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// Where the next value starts (after any white space), or where the
    /// scan stopped, as a byte offset into the text.
    pub fn next_value_at(&mut self) -> usize {
        self.space();
        self.at
    }

    /// Whether the next value (after any white space) is an object.
    pub fn at_object(&mut self) -> bool {
        self.space();
        self.peek() == Some(b'{')
    }

    /// Reads an object, calling `field` with each name and a scan positioned
    /// at its value. `field` must read the value (with [`Scan::value`] or
    /// [`Scan::fields`]) before it returns. The object must be the next value.
    pub fn fields(
        &mut self,
        mut field: impl FnMut(Name<'a>, &mut Scan<'a>) -> Result<(), NotJson>,
    ) -> Result<(), NotJson> {
        self.space();
        self.expect(b'{', "`{`")?;
        if self.empty(b'}') {
            return Ok(());
        }
        loop {
            self.space();
            if self.peek() != Some(b'"') {
                return Err(self.fail("a field name"));
            }
            let name = self.string()?;
            self.space();
            self.expect(b':', "`:`")?;
            field(name, self)?;
            if !self.more(b'}', "`,` or `}`")? {
                return Ok(());
            }
        }
    }

    /// After an opening bracket: whether `close` follows at once (then read).
    fn empty(&mut self, close: u8) -> bool {
        self.space();
        let empty = self.peek() == Some(close);
        self.at += usize::from(empty);
        empty
    }

    /// After an item of an array or object: `true` past a `,` (another item
    /// follows), `false` past `close` (the end).
    fn more(&mut self, close: u8, expected: &'static str) -> Result<bool, NotJson> {
        self.space();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.at += 1;
                Ok(false)
            }
            _ => Err(self.fail(expected)),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn fail(&self, expected: &'static str) -> NotJson {
        NotJson {
            column: self.at + 1,
            expected,
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), NotJson> {
        match self.peek() == Some(byte) {
            true => {
                self.at += 1;
                Ok(())
            }
            false => Err(self.fail(expected)),
        }
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn skip(&mut self, depth: usize) -> Result<(), NotJson> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') | Some(b'[') if depth >= MAX_DEPTH => Err(self.fail("less nesting")),
            Some(b'{') => self.fields(|_, scan| {
                scan.space();
                scan.skip(depth + 1)
            }),
            Some(b'[') => self.array(depth),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.fail("a value")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), NotJson> {
        self.at += 1;
        if self.empty(b']') {
            return Ok(());
        }
        loop {
            self.space();
            self.skip(depth + 1)?;
            if !self.more(b']', "`,` or `]`")? {
                return Ok(());
            }
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), NotJson> {
        match self.text[self.at..].starts_with(word) {
            true => {
                self.at += word.len();
                Ok(())
            }
            false => Err(self.fail("a value")),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), NotJson> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.fail("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.one_or_more_digits()?;
        }
        Ok(())
    }

    fn one_or_more_digits(&mut self) -> Result<(), NotJson> {
        match self.peek() {
            Some(b'0'..=b'9') => {
                self.digits();
                Ok(())
            }
            _ => Err(self.fail("a digit")),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    /// A string, positioned at its opening quote; returns what is between
    /// the quotes. The common string (plain ASCII, no escape) is read here,
    /// inline; anything else goes on in [`Scan::string_rest`].
    #[inline]
    fn string(&mut self) -> Result<Name<'a>, NotJson> {
        self.at += 1;
        let start = self.at;
        self.plain_run();
        if self.text.get(self.at) == Some(&b'"') {
            let raw = &self.text[start..self.at];
            self.at += 1;
            return Ok(Name {
                raw,
                escaped: false,
            });
        }
        self.string_rest(start)
    }

    /// Skips the string's plain bytes from where the scan is: eight at a
    /// time up to the first that is not plain, then byte by byte.
    #[inline]
    fn plain_run(&mut self) {
        while let Some(chunk) = self.text.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([b'"'; 8]));
            let special = crate::util::json_string_specials(word);
            if special != 0 {
                self.at += (special.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while self
            .text
            .get(self.at)
            .is_some_and(|&b| PLAIN_ASCII[usize::from(b)])
        {
            self.at += 1;
        }
    }

    /// The rest of a string begun at `start`, from a byte the plain run
    /// stopped at: an escape, UTF-8, a control character or the end.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Result<Name<'a>, NotJson> {
        let mut escaped = false;
        loop {
            let Some(&byte) = self.text.get(self.at) else {
                return Err(self.fail("the string's closing quote"));
            };
            match byte {
                b'"' => {
                    let raw = &self.text[start..self.at];
                    self.at += 1;
                    return Ok(Name { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    self.escape()?;
                }
                0x00..=0x1f => return Err(self.fail("no control character in a string")),
                _ => self.at += 1,
            }
            self.plain_run();
        }
    }

    fn escape(&mut self) -> Result<(), NotJson> {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.at += 1;
                Ok(())
            }
            Some(b'u') => {
                self.at += 1;
                for _ in 0..4 {
                    match self.peek() {
                        Some(b) if b.is_ascii_hexdigit() => self.at += 1,
                        _ => return Err(self.fail("a hex digit")),
                    }
                }
                Ok(())
            }
            _ => Err(self.fail("an escape")),
        }
    }
}

/// The bytes a string holds as they are, in the scan's quick loop: ASCII
/// other than `"`, `\` and control characters.
static PLAIN_ASCII: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_come_with_their_values_text() {
        let text = br#" {"a": 1, "b\u0041" : {"c": [true, null, "x\"y"]}, "d": -0.5e+3 } "#;
        let mut seen = Vec::new();
        let mut scan = Scan::new(text);
        scan.fields(|name, scan| {
            let value = scan.value()?;
            seen.push((name.is("a") || name.is("bA"), value.to_vec()));
            Ok(())
        })
        .unwrap();
        scan.end().unwrap();
        assert_eq!(
            seen,
            vec![
                (true, b"1".to_vec()),
                (true, br#"{"c": [true, null, "x\"y"]}"#.to_vec()),
                (false, b"-0.5e+3".to_vec()),
            ]
        );
    }

    #[test]
    fn what_serde_json_refuses_is_refused_with_its_column() {
        for (text, column) in [
            ("", 1),
            ("{\"a\" 1}", 6),
            ("{\"a\": 01}", 8),
            ("[1,]", 4),
            ("{\"a\": tru}", 7),
            ("\"a\tb\"", 3),
            ("\"\\x\"", 3),
            ("\"\\u12g4\"", 6),
            ("1.", 3),
            ("-", 2),
            ("{} x", 4),
            ("\"open", 6),
        ] {
            let err = Scan::whole(text.as_bytes()).unwrap_err();
            assert_eq!(err.column, column, "{text:?}: {err}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_err());
        }
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for (n, ok) in [(127, true), (128, false)] {
            let text = nested(n);
            assert_eq!(Scan::whole(text.as_bytes()).is_ok(), ok, "{n} deep");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), ok);
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// On any text made of JSON's own characters, the scan accepts
        /// exactly what serde_json accepts.
        #[test]
        fn accepts_what_serde_json_accepts(text in r#"[\[\]{}":,0-9.eE+\- tfrueanl\\u"]{0,24}"#) {
            let ours = Scan::whole(text.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            prop_assert_eq!(ours, theirs, "{:?}", text);
        }

        /// On a JSON text with one character removed, replaced or added, the
        /// scan accepts exactly what serde_json accepts.
        #[test]
        fn accepts_what_serde_json_accepts_near_json(
            value in json_value(),
            at in any::<prop::sample::Index>(),
            edit in 0..3u8,
            byte in prop::sample::select(b"[]{}\":,0123456789.eE+- tfnul\\\x01".to_vec()),
        ) {
            let mut text = serde_json::to_vec(&value).unwrap();
            let i = at.index(text.len() + 1);
            match edit {
                0 if i < text.len() => { text.remove(i); }
                1 if i < text.len() => text[i] = byte,
                _ => text.insert(i, byte),
            }
            let Ok(text) = String::from_utf8(text) else { return Ok(()) };
            let ours = Scan::whole(text.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            prop_assert_eq!(ours, theirs, "{:?}", text);
        }

        /// Eight bytes at a time find the first byte a string cannot hold
        /// as it is, as a look at each byte does.
        #[test]
        fn eight_bytes_find_the_first_byte_that_is_not_plain(
            bytes in prop::array::uniform8(prop::sample::select(b"\"\\\x00\x1f !#[]a~\x7f\x80\xc3\xff".to_vec())),
        ) {
            let first = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let special = crate::util::json_string_specials(u64::from_le_bytes(bytes));
            let found = (special != 0).then(|| (special.trailing_zeros() / 8) as usize);
            prop_assert_eq!(found, first, "{:?}", bytes);
        }

        /// On any JSON value, the scan accepts it and gives back its whole text.
        #[test]
        fn gives_back_any_value_whole(value in json_value()) {
            let text = serde_json::to_string_pretty(&value).unwrap();
            prop_assert_eq!(Scan::whole(text.as_bytes()), Ok(text.trim().as_bytes()));
        }
    }
}
