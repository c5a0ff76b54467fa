//! HTTP methods as a small bit set, so a route's method filter is one AND per request.

/// The methods a route may list, in the order an `Allow` header names them.
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];

/// A set of HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u16);

impl MethodSet {
    /// Every method (a route without a `methods` list).
    pub const ANY: MethodSet = MethodSet(u16::MAX);

    /// The bit of a method name, case-sensitive as HTTP is; `None` for an unknown method.
    pub fn bit(method: &str) -> Option<MethodSet> {
        METHODS.iter().position(|m| *m == method).map(|i| MethodSet(1 << i))
    }

    /// Parses a config list; returns the names that are not methods.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<MethodSet, Vec<&'a str>> {
        let mut set = MethodSet(0);
        let mut unknown = Vec::new();
        let mut any = false;
        for name in names {
            any = true;
            match MethodSet::bit(&name.to_ascii_uppercase()) {
                Some(bit) => set.0 |= bit.0,
                None => unknown.push(name),
            }
        }
        match (unknown.is_empty(), any) {
            (false, _) => Err(unknown),
            (true, false) => Ok(MethodSet::ANY),
            (true, true) => Ok(set),
        }
    }

    /// Whether `method` is in the set; unknown methods match only [`MethodSet::ANY`].
    pub fn accepts(self, method: &str) -> bool {
        if self == MethodSet::ANY {
            return true;
        }
        MethodSet::bit(method).is_some_and(|b| self.0 & b.0 != 0)
    }

    /// Union of two sets.
    pub fn union(self, other: MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    /// The `Allow` header value: the known methods in the set, in canonical order.
    pub fn allow_header(self) -> String {
        let names: Vec<&str> =
            METHODS.iter().enumerate().filter(|(i, _)| self.0 & (1 << i) != 0).map(|(_, m)| *m).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively_and_rejects_unknown() {
        assert_eq!(MethodSet::parse(["get", "POST"]).map(|s| s.allow_header()), Ok("GET, POST".to_string()));
        assert_eq!(MethodSet::parse(["GET", "FETCH"]), Err(vec!["FETCH"]));
        assert_eq!(MethodSet::parse([]), Ok(MethodSet::ANY));
    }

    #[test]
    fn any_accepts_unknown_methods_but_a_list_does_not() {
        assert!(MethodSet::ANY.accepts("PROPFIND"));
        let get = MethodSet::parse(["GET"]).unwrap();
        assert!(get.accepts("GET"));
        assert!(!get.accepts("POST"));
        assert!(!get.accepts("PROPFIND"));
    }
}
