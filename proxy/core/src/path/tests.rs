//! The classic bypass spellings, each with what every setting makes of it; and the two properties that make
//! normalisation safe to decide on: no dot-segment survives, and a normalised path is a fixed point.

use proptest::prelude::*;

use super::*;

fn settings(normalize: bool, merge_slashes: bool, escaped_slashes: EscapedSlashes) -> PathConfig {
    PathConfig { normalize, merge_slashes, escaped_slashes }
}

const DEFAULT: PathConfig =
    PathConfig { normalize: true, merge_slashes: false, escaped_slashes: EscapedSlashes::Reject };

fn run(path: &str, s: &PathConfig) -> Result<String, PathError> {
    normalize(path, s).map(Cow::into_owned)
}

#[test]
fn the_bypass_table_under_the_defaults() {
    use PathError::*;
    let cases: &[(&str, Result<&str, PathError>)] = &[
        ("/public/../admin", Ok("/admin")),
        ("/public/%2e%2e/admin", Ok("/admin")),
        ("/public/%2E%2e/admin", Ok("/admin")),
        ("/public/.%2E/admin", Ok("/admin")),
        ("/public/..%2fadmin", Err(EscapedSlash)),
        ("/public%2F..%2Fadmin", Err(EscapedSlash)),
        ("/public/..%5cadmin", Err(EscapedSlash)),
        ("/public/..\\admin", Ok("/admin")),
        ("/public\\..\\admin", Ok("/admin")),
        ("/public/./admin", Ok("/public/admin")),
        ("/a/b/../../../../etc/passwd", Ok("/etc/passwd")),
        ("//admin", Ok("//admin")),
        ("/a//b", Ok("/a//b")),
        ("/a/.", Ok("/a/")),
        ("/a/..", Ok("/")),
        ("/..", Ok("/")),
        ("/.well-known/x", Ok("/.well-known/x")),
        ("/a/...", Ok("/a/...")),
        ("/%7Euser/%61bc", Ok("/~user/abc")),
        ("/caf%c3%a9", Ok("/caf%C3%A9")),
        ("/a%20b", Ok("/a%20b")),
        ("/%C0%AE%C0%AE/admin", Err(BadEncoding)),
        ("/%c0%af", Err(BadEncoding)),
        ("/%ff", Err(BadEncoding)),
        ("/a%00b", Err(BadEncoding)),
        ("/a%2", Err(BadEscape)),
        ("/a%zz", Err(BadEscape)),
        ("/plain/path", Ok("/plain/path")),
        ("*", Ok("*")),
    ];
    for (path, want) in cases {
        assert_eq!(run(path, &DEFAULT), want.map(str::to_string), "{path}");
    }
}

#[test]
fn each_setting_changes_only_what_it_names() {
    let merge = settings(true, true, EscapedSlashes::Reject);
    assert_eq!(run("//admin//x/", &merge), Ok("/admin/x/".into()));
    assert_eq!(run("/a//..//b", &merge), Ok("/b".into()));

    let keep = settings(true, false, EscapedSlashes::Keep);
    // The escaped slash is not a separator: `..%2F` is an ordinary segment, kept with upper-case hex.
    assert_eq!(run("/public/..%2fadmin", &keep), Ok("/public/..%2Fadmin".into()));
    assert_eq!(run("/a%5cb", &keep), Ok("/a%5Cb".into()));

    let unescape = settings(true, false, EscapedSlashes::Unescape);
    assert_eq!(run("/public/..%2fadmin", &unescape), Ok("/admin".into()));
    assert_eq!(run("/public/..%5Cadmin", &unescape), Ok("/admin".into()));

    // Off: dot-segments and escapes pass as written; escapes must still be well-formed and %2F still obeys
    // escaped_slashes.
    let off = settings(false, false, EscapedSlashes::Reject);
    assert_eq!(run("/public/../admin", &off), Ok("/public/../admin".into()));
    assert_eq!(run("/public/%2e%2e/admin", &off), Ok("/public/%2e%2e/admin".into()));
    assert_eq!(run("/a\\b", &off), Ok("/a\\b".into()));
    assert_eq!(run("/a%2fb", &off), Err(PathError::EscapedSlash));
    assert_eq!(run("/a%zz", &off), Err(PathError::BadEscape));
    assert_eq!(run("/a%2fb", &settings(false, false, EscapedSlashes::Keep)), Ok("/a%2Fb".into()));
}

#[test]
fn a_path_that_needs_nothing_is_not_copied() {
    for path in ["/", "/users/42", "/a.b/c.d", "/x-y_z~"] {
        assert!(matches!(normalize(path, &DEFAULT), Ok(Cow::Borrowed(_))), "{path}");
    }
}

fn arb_settings() -> impl Strategy<Value = PathConfig> {
    let slashes = prop::sample::select(vec![EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Unescape]);
    (any::<bool>(), slashes).prop_map(|(merge, escaped)| settings(true, merge, escaped))
}

/// Paths built from the pieces bypasses are made of.
fn arb_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "a", "b", "%41", "%c3%a9", "%", "%zz", "~",
        "%00", "%C0%AE",
    ]);
    prop::collection::vec(piece, 0..16).prop_map(|pieces| format!("/{}", pieces.concat()))
}

proptest! {
    #[test]
    fn no_dot_segment_survives(path in arb_path(), s in arb_settings()) {
        if let Ok(out) = normalize(&path, &s) {
            prop_assert!(out.starts_with('/'), "{out}");
            prop_assert!(!out.contains('\\'), "{out}");
            for segment in out.split('/') {
                prop_assert!(segment != "." && segment != "..", "{path} -> {out}");
                let lower = segment.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2e"), "an escaped dot survived: {path} -> {out}");
            }
        }
    }

    #[test]
    fn normalising_twice_changes_nothing(path in arb_path(), s in arb_settings()) {
        if let Ok(once) = normalize(&path, &s) {
            let twice = normalize(&once, &s);
            prop_assert_eq!(twice.as_deref(), Ok(&*once), "{}", path);
        }
    }

    #[test]
    fn any_text_is_answered_without_a_panic(path in ".{0,64}", s in arb_settings()) {
        let _ = normalize(&path, &s);
    }
}
