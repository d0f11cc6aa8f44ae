//! Every `detail` Kagami can put in its Cache-Status header is explained in the README's
//! Cache-Status table: the values are collected from the source and compared with the table.

use std::collections::BTreeSet;
use std::path::Path;

fn quoted_after(text: &str, marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        if let Some(end) = rest.find('"') {
            found.push(rest[..end].to_string());
        }
    }
    found
}

/// The text from `start` to the first `end` after it.
fn block<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let Some(at) = text.find(start) else {
        panic!("{start:?} not found: update this test with the code");
    };
    let rest = &text[at..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn emitted() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut details = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Tests inside a file may build any header they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        details.extend(quoted_after(code, ".detail(\""));
        details.extend(quoted_after(code, "detail: \""));
    }
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
    // Values that reach `.detail(...)` through a variable.
    let policy = read("src/cache/policy.rs");
    for impl_of in ["impl NotStorable {", "impl StaleOnError {"] {
        details.extend(quoted_after(block(&policy, impl_of, "\n}\n"), "=> \""));
    }
    let origin = read("src/origin/mod.rs");
    let detail_fn = block(&origin, "pub fn detail(&self)", "\n    }\n");
    details.extend(quoted_after(detail_fn, "=> \""));
    // Details kept in a named constant.
    let patience = read("src/proxy/patience.rs");
    details.extend(quoted_after(&patience, "pub const ORIGIN_SLOW: &str = \""));
    let lookup = read("src/proxy/lookup.rs");
    details.extend(quoted_after(
        block(&lookup, "let detail = if", "} else if"),
        "Some(\"",
    ));
    details
}

fn documented() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut details = BTreeSet::new();
    for row in readme.lines().filter(|l| l.starts_with("| `kagami;")) {
        // `...; detail="a"` in the example, and `"b"` for the other values of a row.
        details.extend(quoted_after(row, "detail=\""));
        details.extend(quoted_after(row, "`\""));
    }
    details
}

#[test]
fn every_detail_the_code_emits_is_in_the_readme_table() {
    let emitted = emitted();
    assert!(
        emitted.contains("origin-error") && emitted.contains("grace"),
        "{emitted:?}"
    );
    let documented = documented();
    let missing: Vec<_> = emitted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "not in the README's Cache-Status table: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        stale.is_empty(),
        "in the README table but never emitted: {stale:?}"
    );
}
